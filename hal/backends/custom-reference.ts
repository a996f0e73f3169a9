/**
 * Reference implementation of the custom boot-control protocol (hal/backends/custom.ts) as a POSIX
 * shell script a board integrator can start from. Emulated boards created with `--backend custom`
 * write it to DIR/custom-boot.sh and call it as `DIR/custom-boot.sh STATE_FILE CMDLINE_FILE <command>
 * [SLOT] [N]`. Its state file stands in for the board's bootloader storage:
 *
 *   primary A
 *   A good
 *   B trial 2
 *
 * (`parseCustomStateFile` below; the emulated board's "bootloader" for custom boards reads it.)
 * Writes are atomic: temp file, sync, rename, sync of the directory.
 */
import { SlotflipError } from '../errors.js';
import type { SlotName } from '../boot-control.js';
import type { EmulatedSlot } from './emulated.js';

export const CUSTOM_REFERENCE_SCRIPT = `#!/bin/sh
# slotflip custom boot-control backend, reference implementation (see hal/backends/custom.ts).
# usage: custom-boot.sh STATE_FILE CMDLINE_FILE get-booted|get-state SLOT|mark-bad SLOT|arm-trial SLOT N|commit SLOT
set -eu
state=$1; cmdline=$2; cmd=$3; slot=\${4:-}; n=\${5:-}
die() { echo "custom-boot: $*" >&2; exit 2; }
load() {
  primary=$(sed -n 's/^primary \\([AB]\\)$/\\1/p' "$state")
  sa=$(sed -n 's/^A //p' "$state"); sb=$(sed -n 's/^B //p' "$state")
  [ -n "$primary" ] && [ -n "$sa" ] && [ -n "$sb" ] || die "malformed state file $state"
}
save() {
  new=$(printf 'primary %s\\nA %s\\nB %s' "$primary" "$sa" "$sb")
  [ "$new" = "$(cat "$state")" ] && return 0
  printf '%s\\n' "$new" > "$state.tmp"; sync "$state.tmp"; mv "$state.tmp" "$state"; sync "$(dirname "$state")"
}
need_slot() { case "$slot" in A|B) ;; *) die "bad slot '$slot'";; esac; }
get() { if [ "$1" = A ]; then echo "$sa"; else echo "$sb"; fi; }
put() { if [ "$1" = A ]; then sa=$2; else sb=$2; fi; }
other() { if [ "$1" = A ]; then echo B; else echo A; fi; }
selectable() { case "$(get "$1")" in good) return 0;; "trial 0") return 1;; trial\\ *) return 0;; *) return 1;; esac; }
case "$cmd" in
  get-booted)
    for w in $(cat "$cmdline"); do case "$w" in slotflip.slot=A) echo A; exit 0;; slotflip.slot=B) echo B; exit 0;; esac; done
    die "no slotflip.slot= on the command line" ;;
  get-state)
    need_slot; load
    first=""; if selectable "$primary"; then first=$primary; elif selectable "$(other "$primary")"; then first=$(other "$primary"); fi
    p=0; [ "$first" = "$slot" ] && p=1
    case "$(get "$slot")" in good) echo "good 0 $p";; bad) echo "bad 0 $p";; trial\\ *) echo "$(get "$slot") $p";; *) die "bad state";; esac ;;
  mark-bad) need_slot; load; put "$slot" bad; save ;;
  arm-trial)
    need_slot; case "$n" in ''|*[!0-9]*|0) die "bad tries '$n'";; esac
    load; primary=$slot; put "$slot" "trial $n"; save ;;
  commit) need_slot; load; primary=$slot; put "$slot" good; save ;;
  *) die "unknown command '$cmd'" ;;
esac
`;

export interface CustomBoardState {
  primary: SlotName;
  slots: Record<SlotName, EmulatedSlot>;
}

/** Strict parse of the reference script's state file. Throws HAL_BOOTENV_PARSE. */
export function parseCustomStateFile(text: string): CustomBoardState {
  const m = /^primary ([AB])\nA (good|bad|trial \d{1,4})\nB (good|bad|trial \d{1,4})\n$/.exec(text);
  if (!m) throw new SlotflipError('HAL_BOOTENV_PARSE', 'custom board state file is malformed');
  const slot = (s: string): EmulatedSlot => (s.startsWith('trial ') ? { state: 'trial', triesLeft: Number(s.slice(6)) } : { state: s as 'good' | 'bad' });
  return { primary: m[1] as SlotName, slots: { A: slot(m[2]!), B: slot(m[3]!) } };
}

export function formatCustomStateFile(s: CustomBoardState): string {
  const f = (e: EmulatedSlot) => (e.state === 'trial' ? `trial ${e.triesLeft ?? 0}` : e.state);
  return `primary ${s.primary}\nA ${f(s.slots.A)}\nB ${f(s.slots.B)}\n`;
}
