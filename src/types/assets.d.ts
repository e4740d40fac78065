// Files imported with `with { type: "file" }` resolve to a path on disk
// (inside a compiled binary, a path Bun extracts or serves the file from).
declare module "*.so" {
  const path: string;
  export default path;
}
