// A small, safe Markdown renderer for chat replies.
//
// Safety model: the WHOLE input is HTML-escaped first (& < > " '), and only then are
// Markdown constructs turned into a fixed set of tags we emit ourselves. Model or user
// text can therefore never produce a tag or an attribute; the result is safe to assign
// to innerHTML. Links are emitted only for http(s)/mailto URLs, with rel=noopener.
//
// Supported: fenced code blocks (``` with optional language; an unclosed fence while
// streaming renders as code), inline code, headings, unordered/ordered lists (nested by
// indentation), blockquotes, horizontal rules, **bold**, *italic* / _italic_,
// ~~strike~~, [links](https://...), paragraphs with line breaks.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Placeholders use private-use characters, which are stripped from the input first.
const PH_OPEN = '\uE000';
const PH_CLOSE = '\uE001';

function renderInline(escaped) {
  const codes = [];
  let s = escaped.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => {
    codes.push(`<code>${code.trim() === '' ? code : code.replace(/^ (.*) $/, '$1')}</code>`);
    return `${PH_OPEN}${codes.length - 1}${PH_CLOSE}`;
  });
  // Links: [text](url) with a safe scheme only. The URL was escaped already, so it
  // cannot contain a quote or an angle bracket.
  s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s()]+)\)/g,
    (_, label, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`);
  s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, '<strong>$1</strong>');
  s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, '$1<strong>$2</strong>');
  s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, '$1<em>$2</em>');
  s = s.replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, '$1<em>$2</em>');
  s = s.replace(/~~(?=\S)([^~\n]*?\S)~~/g, '<del>$1</del>');
  s = s.replace(new RegExp(`${PH_OPEN}(\\d+)${PH_CLOSE}`, 'g'), (_, i) => codes[Number(i)]);
  return s;
}

const RE_FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const RE_HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RE_HR = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const RE_LIST = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const RE_QUOTE = /^ {0,3}&gt;\s?(.*)$/;

function indentWidth(ws) {
  return ws.replace(/\t/g, '    ').length;
}

// Renders a run of list lines (already escaped) into nested <ul>/<ol>.
function renderList(lines) {
  let html = '';
  const stack = []; // {indent, tag}
  let openItem = false;
  for (const line of lines) {
    const m = RE_LIST.exec(line);
    if (!m) {
      // A continuation line of the current item.
      if (openItem) html += `<br>${renderInline(line.trim())}`;
      continue;
    }
    const indent = indentWidth(m[1]);
    const tag = /\d/.test(m[2]) ? 'ol' : 'ul';
    while (stack.length && indent < stack[stack.length - 1].indent) {
      html += `</li></${stack.pop().tag}>`;
    }
    const top = stack[stack.length - 1];
    if (!top || indent > top.indent) {
      const start = tag === 'ol' ? parseInt(m[2], 10) : 1;
      html += tag === 'ol' && start !== 1 ? `<ol start="${start}">` : `<${tag}>`;
      stack.push({ indent, tag });
    } else if (top.tag !== tag) {
      html += `</li></${stack.pop().tag}><${tag}>`;
      stack.push({ indent, tag });
    } else {
      html += '</li>';
    }
    html += `<li>${renderInline(m[3])}`;
    openItem = true;
  }
  while (stack.length) html += `</li></${stack.pop().tag}>`;
  return html;
}

function renderBlocks(lines) {
  let html = '';
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^\s*$/.test(line)) { i++; continue; }

    const fence = RE_FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const lang = fence[2];
      const body = [];
      i++;
      const close = new RegExp(`^ {0,3}${marker[0] === '`' ? '`' : '~'}{${marker.length},}\\s*$`);
      while (i < lines.length && !close.test(lines[i])) {
        body.push(lines[i]);
        i++;
      }
      i++; // closing fence (or past the end while streaming)
      const cls = lang ? ` class="language-${lang}"` : '';
      const label = lang ? `<span class="code-lang">${lang}</span>` : '';
      html += `<pre>${label}<code${cls}>${body.join('\n')}</code></pre>`;
      continue;
    }

    const heading = RE_HEADING.exec(line);
    if (heading) {
      const level = heading[1].length;
      html += `<h${level}>${renderInline(heading[2])}</h${level}>`;
      i++;
      continue;
    }

    if (RE_HR.test(line)) { html += '<hr>'; i++; continue; }

    if (RE_QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && RE_QUOTE.test(lines[i])) {
        body.push(RE_QUOTE.exec(lines[i])[1]);
        i++;
      }
      html += `<blockquote>${renderBlocks(body)}</blockquote>`;
      continue;
    }

    if (RE_LIST.test(line) && (indentWidth(RE_LIST.exec(line)[1]) < 4)) {
      const body = [];
      while (i < lines.length && !/^\s*$/.test(lines[i]) && !RE_FENCE.test(lines[i]) &&
             (RE_LIST.test(lines[i]) || /^\s+\S/.test(lines[i]))) {
        body.push(lines[i]);
        i++;
      }
      html += renderList(body);
      continue;
    }

    // Paragraph: consecutive lines until a blank line or another block starts.
    const para = [];
    while (i < lines.length && !/^\s*$/.test(lines[i]) && !RE_FENCE.test(lines[i]) &&
           !RE_HEADING.test(lines[i]) && !RE_HR.test(lines[i]) && !RE_QUOTE.test(lines[i]) &&
           !(para.length && RE_LIST.test(lines[i]))) {
      para.push(lines[i].trim());
      i++;
    }
    if (para.length === 0) { // a line no rule claimed (defensive): emit it as text
      para.push(lines[i].trim());
      i++;
    }
    html += `<p>${renderInline(para.join('\n')).replace(/\n/g, '<br>')}</p>`;
  }
  return html;
}

// Markdown text (untrusted) -> safe HTML string.
export function renderMarkdown(text) {
  const clean = String(text ?? '')
    .replace(/[\uE000\uE001\u0000]/g, '')
    .replace(/\r\n?/g, '\n');
  return renderBlocks(escapeHtml(clean).split('\n'));
}

// Tool calls as readable blocks: the function name, then its arguments pretty-printed (or
// as they are while they still stream in and do not parse yet). calls: [{name, arguments}].
export function renderToolCalls(calls) {
  let html = '';
  for (const c of calls || []) {
    let args = String(c.arguments ?? '');
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { /* partial: show as is */ }
    html += `<div class="tool-call"><div class="tool-call-name"><span class="tool-call-label">Tool call</span> ` +
      `<code>${escapeHtml(String(c.name ?? ''))}</code></div><pre><code>${escapeHtml(args)}</code></pre></div>`;
  }
  return html;
}

// A Llama 3.1 call written as text ({"name": ..., "parameters": {...}} or after
// <|python_tag|>), as the model writes it when it was not asked through `tools`: the calls,
// or null when the text is not one.
export function toolCallsInText(text) {
  let t = String(text ?? '').trim();
  if (t.startsWith('<|python_tag|>')) t = t.slice('<|python_tag|>'.length).trim();
  if (!t.startsWith('{')) return null;
  try {
    const j = JSON.parse(t);
    if (j && typeof j.name === 'string' && (typeof j.parameters === 'object' || typeof j.arguments === 'object')) {
      return [{ name: j.name, arguments: JSON.stringify(j.parameters ?? j.arguments) }];
    }
  } catch { /* not JSON */ }
  return null;
}
