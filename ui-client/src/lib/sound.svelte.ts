// The critical alarm's sound: a distinct two-tone call made with Web Audio (no file to fetch).
// Browsers play sound only after a user gesture, hence the "enable sound" button; a mute times
// out, so that a forgotten mute does not silence the next shift.

const MUTE_MS = 10 * 60 * 1000;

export const sound = $state({ enabled: false, mutedUntil: 0, played: 0 });

let context: AudioContext | null = null;

export function enableSound() {
  context ??= new AudioContext();
  void context.resume();
  sound.enabled = true;
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
