// A small Markdown renderer for model output (and users' prompts) that can never produce live HTML.
//
// It builds DOM nodes with createElement and puts every piece of text in with createTextNode, so
// `<img src=x onerror=...>` or `<script>` in the input stays text. Only a fixed set of elements is ever
// made: p, br, h3-h6, pre, code, strong, em, del, ul, ol, li, blockquote, hr and a. Links keep only
// absolute http(s) URLs (javascript:, data: and the rest become plain text) and open with
// rel="noopener noreferrer". Images are shown as links, never loaded.
//
// Supported: paragraphs (single newlines kept as line breaks), ``` and ~~~ fenced code blocks (an
// unclosed fence runs to the end, as while an answer is still streaming), headings, bullet and numbered
// lists, block quotes, rules, `inline code`, **bold**, *italic*, ~~strike~~, [links](https://...) and
// bare https:// URLs.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w#+.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const ESCAPABLE = /[\\`*_{}[\]()#+\-.!<>~|]/;
// Inline markup may nest, but not without end: deeper than this is left as text.
const MAX_DEPTH = 8;
// How far an emphasis may reach for its end: keeps long runs of * in a prompt from costing seconds.
const MAX_SPAN = 2000;

/** The URL if it is an absolute http(s) one, else null. */
export function safeUrl(raw) {
  let url;
  try {
    url = new URL(String(raw).trim());
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

function link(href, label, depth) {
  const a = document.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  inline(label, a, depth + 1);
  return a;
}

function closingRun(text, from, ticks) {
  // The next run of exactly `ticks` backticks.
  let at = from;
  while ((at = text.indexOf("`".repeat(ticks), at)) >= 0) {
    let end = at + ticks;
    if (text[at - 1] !== "`" && text[end] !== "`") return at;
    while (text[end] === "`") end += 1;
    at = end;
  }
  return -1;
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

/** Emphasis from `marker` at `start`: [element, next index] or null when it does not close. */
function emphasis(text, start, marker, tag, depth) {
  const open = start + marker.length;
  if (open >= text.length || /\s/.test(text[open])) return null;
  // Underscores inside words (snake_case) are not emphasis.
  if (marker[0] === "_" && isWordChar(text[start - 1])) return null;
  let at = open;
  while ((at = text.indexOf(marker, at)) >= 0 && at - start <= MAX_SPAN) {
    const inner = text.slice(open, at);
    const after = text[at + marker.length];
    const okEnd = inner.length > 0 && !/\s/.test(text[at - 1]);
    const okUnderscore = marker[0] !== "_" || !isWordChar(after);
    // "**" must not be read as the end of "*" emphasis.
    const okSingle = marker.length > 1 || text[at + 1] !== marker;
    if (okEnd && okUnderscore && okSingle) {
      const node = document.createElement(tag);
      inline(inner, node, depth + 1);
      return [node, at + marker.length];
    }
    at += marker.length;
  }
  return null;
}

const LINK = /^\[([^\]\n]{0,1000})\]\(\s*<?([^()\s<>]{1,2048})>?(?:\s+"[^"\n]{0,500}")?\s*\)/;
const BARE_URL = /^https?:\/\/[^\s<>"'`]+/;

/** Appends the inline content of `text` to `parent`. */
export function inline(text, parent, depth = 0) {
  if (depth > MAX_DEPTH) {
    parent.appendChild(document.createTextNode(text));
    return;
  }
  let buffer = "";
  const flush = () => {
    if (buffer) parent.appendChild(document.createTextNode(buffer));
    buffer = "";
  };
  const put = (node) => {
    flush();
    parent.appendChild(node);
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && ESCAPABLE.test(text[i + 1] || "")) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      let ticks = 1;
      while (text[i + ticks] === "`") ticks += 1;
      const end = closingRun(text, i + ticks, ticks);
      if (end >= 0) {
        const code = document.createElement("code");
        let content = text.slice(i + ticks, end);
        if (/^ .*[^ ].* $/.test(content)) content = content.slice(1, -1);
        code.textContent = content;
        put(code);
        i = end + ticks;
        continue;
      }
      buffer += "`".repeat(ticks);
      i += ticks;
      continue;
    }
    if (ch === "*" || ch === "_" || ch === "~") {
      const double = text[i + 1] === ch;
      let found = null;
      if (ch === "~") {
        if (double) found = emphasis(text, i, "~~", "del", depth);
      } else if (double) {
        found = emphasis(text, i, ch + ch, "strong", depth);
      } else {
        found = emphasis(text, i, ch, "em", depth);
      }
      if (found) {
        put(found[0]);
        i = found[1];
        continue;
      }
      const run = double ? 2 : 1;
      buffer += text.slice(i, i + run);
      i += run;
      continue;
    }
    if (ch === "[" || (ch === "!" && text[i + 1] === "[")) {
      const image = ch === "!";
      const match = LINK.exec(text.slice(image ? i + 1 : i));
      if (match) {
        const href = safeUrl(match[2]);
        const label = match[1] || match[2];
        flush();
        if (href) parent.appendChild(link(href, label, depth));
        else inline(label, parent, depth + 1);
        i += match[0].length + (image ? 1 : 0);
        continue;
      }
    }
    if ((ch === "h" || ch === "H") && !isWordChar(text[i - 1])) {
      const match = BARE_URL.exec(text.slice(i));
      if (match) {
        // Sentence punctuation after a URL is not part of it.
        const url = match[0].replace(/[.,;:!?)\]]+$/, "");
        const href = safeUrl(url);
        if (href) {
          const a = document.createElement("a");
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          a.textContent = url;
          put(a);
          i += url.length;
          continue;
        }
      }
    }
    buffer += ch;
    i += 1;
  }
  flush();
}

function paragraph(lines) {
  const p = document.createElement("p");
  lines.forEach((line, index) => {
    if (index > 0) p.appendChild(document.createElement("br"));
    inline(line.trim(), p);
  });
  return p;
}

function startsBlock(line) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    BULLET.test(line) ||
    NUMBERED.test(line) ||
    QUOTE.test(line) ||
    RULE.test(line)
  );
}

function blocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !new RegExp(`^ {0,3}${marker[0]}{${marker.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence, if there is one
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[2]) {
        code.className = `language-${fence[2].replace(/[^\w+-]/g, "")}`;
        pre.dataset.language = fence[2];
      }
      code.textContent = body.join("\n");
      pre.appendChild(code);
      parent.appendChild(pre);
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(document.createElement("hr"));
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // The page owns h1 and h2: the model's headings start at h3.
      const level = Math.min(6, heading[1].length + 2);
      const h = document.createElement(`h${level}`);
      inline(heading[2], h);
      parent.appendChild(h);
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(QUOTE.exec(lines[i])[1]);
        i += 1;
      }
      const quote = document.createElement("blockquote");
      if (depth < MAX_DEPTH) blocks(inner, quote, depth + 1);
      else quote.appendChild(document.createTextNode(inner.join("\n")));
      parent.appendChild(quote);
      continue;
    }
    const bullet = BULLET.test(line);
    const numbered = NUMBERED.exec(line);
    if (bullet || numbered) {
      const pattern = bullet ? BULLET : NUMBERED;
      const list = document.createElement(bullet ? "ul" : "ol");
      if (numbered && numbered[1] !== "1") list.start = Number(numbered[1]);
      let item = null;
      let itemLines = [];
      let sub = null;
      const finish = () => {
        if (!item) return;
        itemLines.forEach((text, index) => {
          if (index > 0) item.appendChild(document.createElement("br"));
          inline(text.trim(), item);
        });
        if (sub) item.appendChild(sub);
        list.appendChild(item);
        item = null;
        sub = null;
      };
      while (i < lines.length) {
        const current = lines[i];
        const match = pattern.exec(current);
        const indented = current.trim() && /^\s+/.test(current);
        const trimmed = current.trim();
        if (match) {
          finish();
          item = document.createElement("li");
          itemLines = [bullet ? match[1] : match[2]];
        } else if (indented && !startsBlock(trimmed)) {
          itemLines.push(current); // a continuation line of the item
        } else if (indented && (BULLET.test(trimmed) || NUMBERED.test(trimmed))) {
          // One level of nesting: a list inside the current item.
          if (!item) {
            item = document.createElement("li");
            itemLines = [];
          }
          const innerBullet = BULLET.exec(trimmed);
          if (!sub) sub = document.createElement(innerBullet ? "ul" : "ol");
          const li = document.createElement("li");
          inline(innerBullet ? innerBullet[1] : NUMBERED.exec(trimmed)[2], li);
          sub.appendChild(li);
        } else {
          break;
        }
        i += 1;
      }
      finish();
      parent.appendChild(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && (para.length === 0 || !startsBlock(lines[i]))) {
      para.push(lines[i]);
      i += 1;
    }
    parent.appendChild(paragraph(para));
  }
}

/** The Markdown `text` as a DocumentFragment of safe elements. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  blocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
  return fragment;
}

/** Replaces the content of `element` with the rendered `text`. */
export function renderInto(element, text) {
  element.replaceChildren(renderMarkdown(text));
}
