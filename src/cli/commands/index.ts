import type { Command } from 'commander';
import { registerAlert } from './alert.js';
import { registerBackup } from './backup.js';
import { registerHostAndNetwork, registerVm } from './compute.js';
import { registerNbd } from './nbd.js';
import { registerOperations } from './operations.js';
import { registerServe } from './serve.js';
import { registerRecover } from './recover.js';
import { registerPolicy } from './policy.js';
import { registerSchedule } from './schedule.js';
import { registerReplication } from './replication.js';
import { registerDr } from './dr.js';
import { registerGroup } from './group.js';
import { registerService } from './service.js';
import { registerObjective } from './objective.js';
import { registerPlan } from './plan.js';
import { registerUser } from './user.js';
import {
  registerBitmap,
  registerPool,
  registerSnapshot,
  registerStorage,
  registerVolume,
} from './storage.js';

/** A command family adds its subcommands to the program. One line per family below. */
export type Register = (program: Command) => void;

export const commandFamilies: Register[] = [
  registerServe,
  registerOperations,
  registerVm,
  registerHostAndNetwork,
  registerPool,
  registerVolume,
  registerSnapshot,
  registerBitmap,
  registerBackup,
  registerRecover,
  registerReplication,
  registerGroup,
  registerService,
  registerObjective,
  registerDr,
  registerPlan,
  registerPolicy,
  registerSchedule,
  registerAlert,
  registerUser,
  registerStorage,
  registerNbd,
];
