// Markdown for answers, safe by construction: it builds DOM nodes with createElement and textContent only and never
// parses HTML, so whatever HTML a model (or a document quoted by it) writes shows up as text. Links keep only
// http(s), mailto and same-site targets. It covers what answers use: paragraphs, headings, fenced code, nested
// lists, tables, block quotes, rules, emphasis, inline code and links. Unfinished syntax (an answer still streaming)
// renders as far as it goes: an open code fence runs to the end, an unclosed ** stays literal.
(() => {
  "use strict";

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w#+.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}>\s?(.*)$/;
  const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const DELIMITER_CELL = /^:?-+:?$/;

  function node(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function splitRow(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    const cells = [];
    let cell = "";
    for (let i = 0; i < row.length; i++) {
      if (row[i] === "\\" && row[i + 1] === "|") {
        cell += "|";
        i++;
      } else if (row[i] === "|") {
        cells.push(cell.trim());
        cell = "";
      } else {
        cell += row[i];
      }
    }
    cells.push(cell.trim());
    return cells;
  }

  function isDelimiterRow(line) {
    if (line === undefined || !line.includes("|")) return false;
    const cells = splitRow(line);
    return cells.length > 0 && cells.every((cell) => DELIMITER_CELL.test(cell));
  }

  function startsTable(lines, i) {
    return lines[i].includes("|") && isDelimiterRow(lines[i + 1]);
  }

  function startsBlock(lines, i) {
    const line = lines[i];
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
      || startsTable(lines, i);
  }

  // ---- inline ----

  function safeHref(raw) {
    // Browsers drop control characters and spaces inside a scheme ("java\nscript:"), so judge the URL without them.
    const url = raw.replace(/[\u0000-\u0020\u007f]/g, "");
    if (/^(https?:\/\/|mailto:)/i.test(url)) return url;
    if (/^\/(?![/\\])/.test(url) || url.startsWith("#")) return url;
    return null;
  }

  // `text` is Markdown for a [text](href) link, plain text for a bare URL (which would otherwise match itself).
  function link(parent, text, href, { plain = false } = {}) {
    const words = (into) => (plain ? into.append(text) : inline(into, text));
    const target = safeHref(href);
    const a = node("a");
    if (target !== null) a.href = target;
    if (target === null || !["http:", "https:", "mailto:"].includes(a.protocol)) {
      words(parent); // an unsafe link keeps its words, not its target
      return;
    }
    if (a.origin !== window.location.origin) {
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
    }
    words(a);
    parent.append(a);
  }

  const INLINE = new RegExp([
    /\\([\\`*_{}[\]()#+\-.!|~>])/.source, // 1: escape
    /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source, // 2, 3: code span
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 4: strong
    /__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 5: strong
    /~~(?=\S)([\s\S]*?\S)~~/.source, // 6: strikethrough
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 7: emphasis
    /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source, // 8: emphasis
    /\[((?:\\.|[^\]\\])*)\]\(\s*<?([^\s()<>]*(?:\([^\s()]*\)[^\s()<>]*)*)>?(?:\s+"[^"]*")?\s*\)/.source, // 9, 10
    /(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"*_])/.source, // 11: bare URL
  ].join("|"), "g");

  function inline(parent, text) {
    let at = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > at) parent.append(text.slice(at, m.index));
      at = m.index + m[0].length;
      if (m[1] !== undefined) parent.append(m[1]);
      else if (m[3] !== undefined) parent.append(node("code", "", m[3].replace(/^ (.*) $/s, "$1")));
      else if (m[4] !== undefined || m[5] !== undefined) inline(parent.appendChild(node("strong")), m[4] ?? m[5]);
      else if (m[6] !== undefined) inline(parent.appendChild(node("del")), m[6]);
      else if (m[7] !== undefined || m[8] !== undefined) inline(parent.appendChild(node("em")), m[7] ?? m[8]);
      else if (m[9] !== undefined) link(parent, m[9], m[10]);
      else if (m[11] !== undefined) link(parent, m[11], m[11], { plain: true });
    }
    if (at < text.length) parent.append(text.slice(at));
  }

  function inlineLines(parent, lines) {
    lines.forEach((line, index) => {
      if (index) parent.append(node("br"));
      inline(parent, line.trim());
    });
  }

  // ---- blocks ----

  function fence(lines, i, parent) {
    const [, marks, lang] = FENCE.exec(lines[i]);
    const close = new RegExp(`^ {0,3}${marks[0] === "`" ? "`" : "~"}{${marks.length},}\\s*$`);
    const body = [];
    i++;
    while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
    const pre = node("pre");
    const code = node("code", lang ? `language-${lang}` : "", body.join("\n"));
    pre.append(code);
    parent.append(pre);
    return i + 1;
  }

  function table(lines, i, parent) {
    const header = splitRow(lines[i]);
    const aligns = splitRow(lines[i + 1]).map((cell) => {
      if (cell.startsWith(":") && cell.endsWith(":")) return "align-center";
      return cell.endsWith(":") ? "align-right" : "";
    });
    const wrap = node("div", "md-table");
    const el = node("table");
    const headRow = node("tr");
    header.forEach((cell, c) => {
      const th = node("th", aligns[c] || "");
      th.scope = "col";
      inline(th, cell);
      headRow.append(th);
    });
    const head = node("thead");
    head.append(headRow);
    el.append(head);
    const body = node("tbody");
    i += 2;
    while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
      const cells = splitRow(lines[i++]);
      const tr = node("tr");
      header.forEach((_, c) => {
        const td = node("td", aligns[c] || "");
        inline(td, cells[c] ?? "");
        tr.append(td);
      });
      body.append(tr);
    }
    if (body.children.length) el.append(body);
    wrap.append(el);
    parent.append(wrap);
    return i;
  }

  function list(lines, i, parent) {
    const first = ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const el = node(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) el.start = parseInt(first[2], 10);
    const items = [];
    let loose = false;
    while (i < lines.length) {
      const m = ITEM.exec(lines[i]);
      if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
      const contentIndent = indent + m[2].length + 1;
      const body = [m[3]];
      i++;
      while (i < lines.length) {
        const line = lines[i];
        if (!line.trim()) {
          // A blank line continues the item only when indented content follows it.
          let next = i + 1;
          while (next < lines.length && !lines[next].trim()) next++;
          if (next < lines.length && lines[next].search(/\S/) >= contentIndent) {
            loose = true;
            body.push(...lines.slice(i, next));
            i = next;
            continue;
          }
          break;
        }
        const lineIndent = line.search(/\S/);
        if (lineIndent > indent) body.push(line.slice(Math.min(lineIndent, contentIndent)));
        else if (!startsBlock(lines, i) && body[body.length - 1].trim()) body.push(line); // lazy continuation
        else break;
        i++;
      }
      items.push(body);
      // Blank lines between items make a loose list; the next item must follow at the same indent.
      let next = i;
      while (next < lines.length && !lines[next].trim()) next++;
      const following = next < lines.length ? ITEM.exec(lines[next]) : null;
      if (next > i && following && following[1].length === indent && /\d/.test(following[2]) === ordered) {
        loose = true;
        i = next;
      }
    }
    for (const body of items) {
      const li = node("li");
      blocks(body, li, !loose);
      el.append(li);
    }
    parent.append(el);
    return i;
  }

  function blocks(lines, parent, tight = false) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        i++;
        continue;
      }
      let m;
      if (FENCE.test(line)) {
        i = fence(lines, i, parent);
      } else if ((m = HEADING.exec(line))) {
        // Answers sit inside the page, under its own headings: "#" is a section of the answer, not the page.
        const heading = node(`h${Math.min(6, m[1].length + 2)}`);
        inline(heading, m[2]);
        parent.append(heading);
        i++;
      } else if (RULE.test(line)) {
        parent.append(node("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const inner = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
          inner.push(m[1]);
          i++;
        }
        const quote = node("blockquote");
        blocks(inner, quote);
        parent.append(quote);
      } else if (ITEM.test(line)) {
        i = list(lines, i, parent);
      } else if (startsTable(lines, i)) {
        i = table(lines, i, parent);
      } else {
        const paragraph = [line];
        i++;
        while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) paragraph.push(lines[i++]);
        if (tight) {
          inlineLines(parent, paragraph);
        } else {
          const p = node("p");
          inlineLines(p, paragraph);
          parent.append(p);
        }
      }
    }
  }

  /** Replaces `target`'s content with `source` rendered as Markdown. */
  function render(source, target) {
    const fragment = document.createDocumentFragment();
    blocks(source.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n"), fragment);
    target.replaceChildren(fragment);
  }

  window.DocentMarkdown = Object.freeze({ render });
})();
