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
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];
