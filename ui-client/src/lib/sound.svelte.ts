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
  tones(context, "square", [880, 660, 880, 660], 0.08, 0.18);
  sound.played += 1;
}

/// One call when an alarm flood begins (a falling three-tone, unlike the critical call).
export function playFlood() {
  if (!sound.enabled || !context || isMuted()) return;
  tones(context, "triangle", [990, 740, 550], 0.1, 0.25);
  sound.floods += 1;
}

/// A call: `frequencies` one after the other, `step` seconds apart, each sounding for most of it.
function tones(audio: AudioContext, type: OscillatorType, frequencies: number[], volume: number, step: number) {
  const start = audio.currentTime;
  for (const [i, frequency] of frequencies.entries()) {
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.type = type;
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(volume, start + i * step);
    gain.gain.setValueAtTime(0, start + i * step + step - 0.02);
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start(start + i * step);
    oscillator.stop(start + i * step + step - 0.01);
  }
}
