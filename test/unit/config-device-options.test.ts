import { describe, expect, test } from "bun:test";
import { DriveOptionError, parseDriveOption, parseNetOption, parseVsockOption, repeatedOption } from "../../src/config/device-options.ts";

describe("--drive", () => {
  test("path alone is a writable, non-root drive", () => {
    expect(parseDriveOption("path=disk.img")).toEqual({ kind: "block", path: "disk.img", readOnly: false });
  });

  test("ro, root and id combine in any order; a path may contain '='", () => {
    expect(parseDriveOption("root,id=data,path=a=b.img,ro")).toEqual({ kind: "block", path: "a=b.img", readOnly: true, root: true, id: "data" });
    expect(parseDriveOption("path=x,readonly=on").readOnly).toBe(true);
  });

  test.each([
    ["ro", "path=IMAGE is required"],
    ["path=", "path= needs a file"],
    ["path=x,root=yes", "root takes no value"],
    ["path=x,ro=off", "ro takes no value"],
    ["path=x,id=", "id= needs a value"],
    ["path=x,format=raw", "unknown key 'format'"],
  ])("'%s' is refused: %s", (text, message) => {
    expect(() => parseDriveOption(text)).toThrow(DriveOptionError);
    expect(() => parseDriveOption(text)).toThrow(message);
  });

  test("every --drive is kept, in order, in both spellings; a missing value is an error", () => {
    expect(repeatedOption(["--drive", "path=a", "--mem", "64", "--drive=path=b", "--", "--drive", "c"], "drive")).toEqual(["path=a", "path=b"]);
    expect(() => repeatedOption(["--drive"], "drive")).toThrow("--drive needs a value");
    expect(() => repeatedOption(["--drive", "--rng"], "drive")).toThrow("--drive needs a value");
  });
});

describe("--net and --vsock", () => {
  test("tap alone, or tap and mac", () => {
    expect(parseNetOption("tap=tap0")).toEqual({ kind: "net", tap: "tap0" });
    expect(parseNetOption("mac=52:54:00:00:00:01,tap=vtap1")).toEqual({ kind: "net", tap: "vtap1", mac: "52:54:00:00:00:01" });
  });

  test("vsock takes a guest CID of 3 or more and a socket path", () => {
    expect(parseVsockOption("cid=3,uds=/tmp/v.sock")).toEqual({ kind: "vsock", guestCid: 3, udsPath: "/tmp/v.sock" });
  });

  test.each([
    [() => parseNetOption("mac=52:54:00:00:00:01"), "tap=NAME is required"],
    [() => parseNetOption("tap=t0,mac="), "mac= needs an address"],
    [() => parseNetOption("tap=t0,queues=2"), "unknown key 'queues' (known: tap, mac, rx-bps, tx-bps)"],
    [() => parseVsockOption("cid=2,uds=/x"), "cid=N must be a whole number from 3"],
    [() => parseVsockOption("cid=three,uds=/x"), "cid=N must be a whole number from 3"],
    [() => parseVsockOption("cid=3"), "uds=PATH is required"],
  ])("refused: %#", (parse, message) => {
    expect(parse).toThrow(message);
  });
});

describe("rate limits on the command line", () => {
  test("bps and iops become per-second token buckets on a drive; rx-bps and tx-bps on an interface", () => {
    expect(parseDriveOption("path=d.img,bps=1048576,iops=100")).toMatchObject({
      rateLimit: { bandwidth: { size: 1048576, refillTimeMs: 1000 }, ops: { size: 100, refillTimeMs: 1000 } },
    });
    expect(parseNetOption("tap=t0,rx-bps=1000,tx-bps=2000")).toMatchObject({
      rxRateLimit: { bandwidth: { size: 1000, refillTimeMs: 1000 } },
      txRateLimit: { bandwidth: { size: 2000, refillTimeMs: 1000 } },
    });
    expect(parseDriveOption("path=d.img")).not.toHaveProperty("rateLimit");
    expect(() => parseDriveOption("path=d.img,iops=0")).toThrow("iops= must be a whole number above 0");
    expect(() => parseNetOption("tap=t0,rx-bps=fast")).toThrow("rx-bps= must be a whole number above 0");
  });
});
