/** Requests to a VM's control API over its Unix socket, with a deadline, for the lifecycle commands. */
import { log as rootLog } from "../log/index.ts";

const log = rootLog.withTag("api-client");

export class ApiUnreachableError extends Error {
  override name = "ApiUnreachableError";
}

export interface ApiAnswer {
  readonly status: number;
  /** The JSON body, or undefined when there was none or it was not JSON. */
  readonly body: unknown;
}

export async function apiRequest(
  socket: string,
  method: string,
  path: string,
  options: { body?: unknown; timeoutMs?: number } = {},
): Promise<ApiAnswer> {
  let response: Response;
  const started = performance.now();
  try {
    response = await fetch(`http://volt${path}`, {
      method,
      unix: socket,
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
      ...(options.body !== undefined ? { body: JSON.stringify(options.body), headers: { "content-type": "application/json" } } : {}),
    } as RequestInit);
  } catch (error) {
    const why = (error as Error).name === "TimeoutError" ? `no answer within ${options.timeoutMs ?? 10_000} ms` : (error as Error).message;
    log.trace("API request failed", { method, path, socket, error: why });
    throw new ApiUnreachableError(`cannot reach the VM's API at ${socket}: ${why}`, { cause: error });
  }
  log.trace("API request answered", { method, path, socket, status: response.status, ms: Math.round(performance.now() - started) });
  const text = await response.text();
  let body: unknown;
  try {
    body = text === "" ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: response.status, body };
}

/** The message of a Volt ({"error": {"message"}}) or Firecracker ({"fault_message"}) error body. */
export function apiErrorMessage(answer: ApiAnswer): { kind: string; message: string } {
  const body = answer.body as { error?: { kind?: string; message?: string }; fault_message?: string } | undefined;
  return {
    kind: body?.error?.kind ?? "api",
    message: body?.error?.message ?? body?.fault_message ?? `the VM's API answered HTTP ${answer.status}`,
  };
}
