// A unified diff (git's) as files with their + and − counts, and as lines coloured by kind:
// added, removed, hunk header, file header, context. The patch is text from the task's
// repository: it reaches the page through text nodes only.

import { h } from "./dom.js";

// The files of ``patch``, in order: {name, added, removed, binary}.
export function parsePatch(patch) {
  const files = [];
  let file = null;
  let inHunk = false;
  for (const line of String(patch || "").split("\n")) {
    if (line.startsWith("diff --git ")) {
      file = { name: gitName(line), added: 0, removed: 0, binary: false };
      files.push(file);
      inHunk = false;
    } else if (!file) {
      continue;
    } else if (line.startsWith("@@")) {
      inHunk = true;
    } else if (!inHunk && line.startsWith("+++ ") && line !== "+++ /dev/null") {
      file.name = line.slice(4).replace(/^b\//, "");
    } else if (!inHunk && line.startsWith("--- ") && line !== "--- /dev/null") {
      file.name = line.slice(4).replace(/^a\//, "");
    } else if (!inHunk && line.startsWith("Binary files ")) {
      file.binary = true;
    } else if (inHunk && line.startsWith("+")) {
      file.added += 1;
    } else if (inHunk && line.startsWith("-")) {
      file.removed += 1;
    }
  }
  return files;
}

// "diff --git a/x b/x": the name after " b/" (a best guess when names hold " b/").
function gitName(line) {
  const rest = line.slice("diff --git ".length);
  const at = rest.lastIndexOf(" b/");
  return at >= 0 ? rest.slice(at + 3) : rest;
}

export function lineKind(line, inHunk) {
  if (line.startsWith("diff --git ") || (!inHunk && /^(index |--- |\+\+\+ |new file|deleted file|similarity|rename |old mode|new mode|Binary files )/.test(line))) {
    return "file";
  }
  if (line.startsWith("@@")) return "hunk";
  if (!inHunk) return "file";
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  if (line.startsWith("\\")) return "meta";
  return "ctx";
}

// The patch as a <pre> of lines, one <span> each, coloured by kind.
export function renderPatch(patch) {
  const pre = h("pre", { class: "patch", tabindex: "0", "aria-label": "patch" });
  let inHunk = false;
  const lines = String(patch || "").replace(/\n$/, "").split("\n");
  for (const line of lines) {
    if (line.startsWith("diff --git ")) inHunk = false;
    const kind = lineKind(line, inHunk);
    if (kind === "hunk") inHunk = true;
    pre.append(h("span", { class: "dl dl-" + kind }, line + "\n"));
  }
  return pre;
}

// The list of files: name, then + and − counts (from the patch), or just the names the task
// recorded when there is no patch to count from.
export function renderFiles(files) {
  return h("ul", { class: "files" }, files.map((file) =>
    h("li", {},
      h("span", { class: "fname" }, file.name),
      file.binary ? h("span", { class: "muted" }, "binary") : [
        h("span", { class: "plus", "aria-label": file.added + " lines added" }, "+" + file.added),
        h("span", { class: "minus", "aria-label": file.removed + " lines removed" }, "−" + file.removed),
      ])));
}
