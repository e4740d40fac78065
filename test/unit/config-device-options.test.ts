import { describe, expect, test } from "bun:test";
import { DriveOptionError, parseDriveOption, repeatedOption } from "../../src/config/drive-option.ts";

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
