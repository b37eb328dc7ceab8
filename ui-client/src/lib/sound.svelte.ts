// The critical alarm's sound: a distinct two-tone call made with Web Audio (no file to fetch).
// Browsers play sound only after a user gesture, hence the "enable sound" button; a mute times
// out, so that a forgotten mute does not silence the next shift.

const MUTE_MS = 10 * 60 * 1000;

export const sound = $state({ enabled: false, mutedUntil: 0, played: 0, floods: 0 });

const PREFERENCE = (login: string) => `vigie.sound.${login}`;

/// Whether this operator had sound on (remembered per operator on this PC).
export function soundWanted(login: string): boolean {
  return typeof localStorage !== "undefined" && localStorage.getItem(PREFERENCE(login)) === "on";
}

/// Remembers the operator's choice.
export function rememberSound(login: string, on: boolean) {
  localStorage.setItem(PREFERENCE(login), on ? "on" : "off");
}

let context: AudioContext | null = null;

/// Sound is on once the browser lets it play (a gesture it counts): until then it stays off, and
/// the header says so; a later gesture tries again.
export function enableSound() {
  context ??= new AudioContext();
  const audio = context;
  void audio.resume().then(() => {
    sound.enabled = audio.state === "running";
  });
}

export function muteSound() {
  sound.mutedUntil = Date.now() + MUTE_MS;
}

export function unmuteSound() {
  sound.mutedUntil = 0;
}

export function isMuted(now = Date.now()): boolean {
  return now < sound.mutedUntil;
}

/// Plays the critical call, unless sound is off or muted. Counts what it played (the tests read
/// `data-played` rather than listen).
export function playCritical() {
  if (!sound.enabled || !context || isMuted()) return;
  const start = context.currentTime;
  for (const [i, frequency] of [880, 660, 880, 660].entries()) {
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    oscillator.type = "square";
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.08, start + i * 0.18);
    gain.gain.setValueAtTime(0, start + i * 0.18 + 0.16);
    oscillator.connect(gain).connect(context.destination);
    oscillator.start(start + i * 0.18);
    oscillator.stop(start + i * 0.18 + 0.17);
  }
  sound.played += 1;
}

/// One call when an alarm flood begins (a falling three-tone, unlike the critical call).
export function playFlood() {
  if (!sound.enabled || !context || isMuted()) return;
  const start = context.currentTime;
  for (const [i, frequency] of [990, 740, 550].entries()) {
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    oscillator.type = "triangle";
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.1, start + i * 0.25);
    gain.gain.setValueAtTime(0, start + i * 0.25 + 0.22);
    oscillator.connect(gain).connect(context.destination);
    oscillator.start(start + i * 0.25);
    oscillator.stop(start + i * 0.25 + 0.23);
  }
  sound.floods += 1;
}
