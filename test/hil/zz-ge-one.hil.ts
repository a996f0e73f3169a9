import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createGrubHilBoard } from './grub-board.js';
registerLane(t, { label: 'grub-efi/ovmf/greenboot', makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention: 'greenboot', tracker, platform: 'ovmf' }), only: ['kernel that never comes up falls back after its tries'] });
