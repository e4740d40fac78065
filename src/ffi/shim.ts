/**
 * Loads Volt's C shim (c-shims/volt_shim.c). build.ts compiles it to
 * build/volt_shim.so; importing it as a file embeds it in the compiled `volt`
 * binary, and Bun hands dlopen a real path at run time, so no compiler or
 * headers are needed where volt runs. Each worker loads its own copy of the
 * symbols (FFI functions belong to one JS thread).
 */
import { dlopen, FFIType } from "bun:ffi";
import shimPath from "../../build/volt_shim.so" with { type: "file" };

const library = dlopen(shimPath, {
  volt_syscall6: {
    args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64],
    returns: FFIType.i64_fast,
  },
  volt_install_kick_handler: { args: [], returns: FFIType.i32 },
});

type SyscallArg = number | bigint;

/** Raw system call: returns the kernel's result, which is -errno on failure. */
export function rawSyscall(
  nr: number,
  a0: SyscallArg = 0,
  a1: SyscallArg = 0,
  a2: SyscallArg = 0,
  a3: SyscallArg = 0,
  a4: SyscallArg = 0,
  a5: SyscallArg = 0,
): number {
  return Number(library.symbols.volt_syscall6(nr, a0, a1, a2, a3, a4, a5));
}

/** Installs the no-op, non-restarting handler for the vCPU kick signal; returns its number. */
export function installKickHandler(): number {
  const signal = library.symbols.volt_install_kick_handler();
  if (signal < 0) throw new Error("sigaction failed for the vCPU kick signal");
  return signal;
}
