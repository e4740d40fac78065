/** Process exit statuses of `volt`, documented in the README; scripts may rely on them. */
export const EXIT = {
  ok: 0,
  /** Internal error: a bug in Volt (please report it). */
  internal: 1,
  /** Bad command line or configuration: nothing was started. */
  usage: 2,
  /** The host's KVM is missing, unusable, or lacks a capability Volt needs. */
  kvmUnavailable: 3,
  /** A diagnostic guest did not behave as expected (`kvm-check --smoke`). */
  checkFailed: 4,
  /** `volt run`: the guest kernel panicked. */
  guestPanic: 5,
  /** `volt run`: the VM failed (an exit Volt cannot handle, a KVM error). */
  vmFailed: 6,
  /** `volt run`: stopped by SIGINT (130) or SIGTERM (143), after a clean VM stop. */
  interrupted: 130,
  terminated: 143,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];
