/** Layer 6 — hypervisor drivers (QEMU: launch, QMP), hosts, VMs, networks. */
export { QmpClient, type QmpEvent } from './qmp.js';
export { QemuVm, accelerator, blockdevFor, qemuCommandLine, GUEST_AGENT_SOCKET } from './qemu-driver.js';
export { GuestAgent, GUEST_AGENT_PORT } from './guest-agent.js';
export type { VmSpec, DiskSpec, NicSpec, BootSpec, VmState, VmExit } from './model.js';
export {
  checkRecoverySettings,
  hasRecoverySettings,
  nicMac,
  seedFiles,
  writeSeed,
  type RecoverySettings,
} from './nocloud.js';
