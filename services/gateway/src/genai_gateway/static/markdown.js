// Markdown from the model (and users' prompts) shown as safe DOM nodes, never as live HTML.
//
// Parsing is markdown-it's (vendor/markdown-it.min.js, the npm package's own browser build, pinned in
// tests/package.json so `npm audit` sees it): a CommonMark parser whose running time grows linearly with
// the input, where the hand-written regular expressions it replaced had cubic and quadratic cases that let
// one prompt freeze a page (the admin console renders users' prompts too). markdown-it is used only as a
// parser: raw HTML is off (it stays text), as are typographic replacements. Its HTML renderer is never
// called; the walker below turns its tokens into elements with createElement and puts every piece of text
// in with createTextNode.
//
// Only a fixed set of elements is ever made: p, br, h3-h6, pre, code, strong, em, del, ul, ol, li,
// blockquote, hr and a. Links keep only absolute http(s) URLs (javascript:, data: and the rest stay
// text) and open with rel="noopener noreferrer nofollow". Images are shown as links, never loaded.
// Single newlines are kept as line breaks; an unclosed ``` fence runs to the end, as while an answer
// is still streaming; headings start at h3, since the page owns h1 and h2.

import "./vendor/markdown-it.min.js";

// Deeper nesting than this (lists in quotes in lists...) is left as text.
const MAX_NESTING = 20;

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

const md = globalThis.markdownit({
  html: false,
  linkify: true,
  typographer: false,
  breaks: true,
  maxNesting: MAX_NESTING,
});
// Tables stay text, as before: the page has no layout for them.
md.disable(["table"]);
// Bare URLs only with their scheme (not "example.org"), and no bare e-mail addresses.
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false });
md.validateLink = (url) => safeUrl(url) !== null;

// Block and inline elements a token may open, by markdown-it's tag name.
const ELEMENTS = new Set(["p", "ul", "ol", "li", "blockquote", "strong", "em", "s"]);

function anchor(href) {
  const a = document.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

/** The element a token opens, or null when its content goes into the enclosing one. */
function opened(token) {
  if (token.type === "heading_open") {
    return document.createElement(`h${Math.min(6, Number(token.tag.slice(1)) + 2)}`);
  }
  if (token.type === "link_open") {
    const href = safeUrl(token.attrGet("href"));
    return href ? anchor(href) : null;
  }
  if (token.type === "paragraph_open" && token.hidden) return null; // a tight list's item text
  // Anything else keeps its content, in the enclosing element.
  if (!ELEMENTS.has(token.tag)) return null;
  const element = document.createElement(token.tag === "s" ? "del" : token.tag);
  if (token.type === "ordered_list_open") {
    const start = Number(token.attrGet("start") || 1);
    if (start !== 1) element.start = start;
  }
  return element;
}

function codeBlock(token) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  const language = (token.info || "").trim().split(/\s+/)[0];
  if (language) {
    code.className = `language-${language.replace(/[^\w+-]/g, "")}`;
    pre.dataset.language = language;
  }
  code.textContent = token.content.replace(/\n$/, "");
  pre.appendChild(code);
  return pre;
}

/** Appends the elements of `tokens` (one level of markdown-it's token stream) to `root`. */
function walk(tokens, root) {
  const parents = [root];
  const top = () => parents[parents.length - 1];
  for (const token of tokens) {
    if (token.nesting === 1) {
      const element = opened(token);
      if (element) top().appendChild(element);
      parents.push(element || top());
      continue;
    }
    if (token.nesting === -1) {
      if (parents.length > 1) parents.pop();
      continue;
    }
    switch (token.type) {
      case "inline":
        walk(token.children || [], top());
        break;
      case "text":
      case "text_special":
        top().appendChild(document.createTextNode(token.content));
        break;
      case "softbreak":
      case "hardbreak":
        top().appendChild(document.createElement("br"));
        break;
      case "code_inline": {
        const code = document.createElement("code");
        code.textContent = token.content;
        top().appendChild(code);
        break;
      }
      case "fence":
      case "code_block":
        top().appendChild(codeBlock(token));
        break;
      case "hr":
        top().appendChild(document.createElement("hr"));
        break;
      case "image": {
        const label = token.content || token.attrGet("alt") || token.attrGet("src");
        const href = safeUrl(token.attrGet("src"));
        const node = href ? anchor(href) : null;
        if (node) node.textContent = label;
        top().appendChild(node || document.createTextNode(label));
        break;
      }
      default:
        // Anything else (html_inline and html_block cannot occur with html off) is shown as its text.
        if (token.content) top().appendChild(document.createTextNode(token.content));
    }
  }
}

/** The Markdown `text` as a DocumentFragment of safe elements. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  walk(md.parse(String(text ?? ""), {}), fragment);
  return fragment;
}

/** Replaces the content of `element` with the rendered `text`. */
export function renderInto(element, text) {
  element.replaceChildren(renderMarkdown(text));
}
