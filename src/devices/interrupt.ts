/**
 * How a device raises its interrupt without knowing about KVM: the VMM passes
 * in an implementation (pulsing a KVM IRQ line, writing an irqfd), tests pass
 * a recorder. Keeping KVM out of src/devices is what lets device tests run on
 * machines without /dev/kvm.
 */

/** An edge-triggered interrupt line: each `trigger` is one pulse. */
export interface InterruptLine {
  trigger(): void;
}

/** Test double: counts pulses instead of raising anything. */
export class CountingInterruptLine implements InterruptLine {
  count = 0;

  trigger(): void {
    this.count++;
  }

  /** The pulses since the last call, resetting the count (for assert-after-each-step tests). */
  take(): number {
    const pulses = this.count;
    this.count = 0;
    return pulses;
  }
}
