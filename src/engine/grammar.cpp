#include "engine/grammar.h"

#include <algorithm>
#include <functional>

namespace cpuchat::grammar {

using Element = Grammar::Element;

namespace {

uint32_t saturating_add(uint32_t a, uint32_t b) { return std::min<uint64_t>(uint64_t(a) + b, kNever); }

}  // namespace

// ---- GrammarBuilder ---------------------------------------------------------------------

int GrammarBuilder::rule(const std::string& name) {
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  const int id = int(names_.size());
  names_.push_back(name);
  ids_[name] = id;
  rules_.emplace_back();
  defined_.push_back(false);
  return id;
}

int GrammarBuilder::new_rule(const std::string& base) {
  for (int i = int(names_.size());; ++i) {
    const std::string name = base + "-" + std::to_string(i);
    if (!ids_.count(name)) return rule(name);
  }
}

void GrammarBuilder::define(int rule, std::vector<Sequence> alternatives) {
  rules_[rule] = std::move(alternatives);
  defined_[rule] = true;
}

Element GrammarBuilder::bytes(const std::bitset<256>& set) {
  const std::string key = set.to_string();
  auto it = set_ids_.find(key);
  if (it != set_ids_.end()) return {Grammar::kBytes, it->second};
  const int id = int(sets_.size());
  sets_.push_back(set);
  set_ids_[key] = id;
  return {Grammar::kBytes, id};
}

Element GrammarBuilder::byte(uint8_t b) {
  std::bitset<256> s;
  s.set(b);
  return bytes(s);
}

Grammar GrammarBuilder::finish(const std::string& root) {
  auto root_it = ids_.find(root);
  if (root_it == ids_.end() || !defined_[root_it->second]) throw GrammarError("the grammar has no rule '" + root + "'");
  for (size_t r = 0; r < rules_.size(); ++r)
    if (!defined_[r]) throw GrammarError("rule '" + names_[r] + "' is used but never defined");

  // Shortest expansion of every rule, by fixed-point iteration.
  const size_t n = rules_.size();
  std::vector<uint32_t> min_len(n, kNever);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r)
      for (const Sequence& seq : rules_[r]) {
        uint32_t len = 0;
        for (const Element& e : seq) len = saturating_add(len, e.kind == Grammar::kBytes ? 1 : min_len[e.arg]);
        if (len < min_len[r]) {
          min_len[r] = len;
          changed = true;
        }
      }
  }
  for (size_t r = 0; r < n; ++r)
    if (min_len[r] >= kNever) throw GrammarError("rule '" + names_[r] + "' can never end (it always recurses)");

  // Left recursion would make the matcher expand forever: rule r reaching r again
  // through elements that can all match nothing.
  std::vector<std::vector<int>> left_refs(n);
  for (size_t r = 0; r < n; ++r)
    for (const Sequence& seq : rules_[r])
      for (const Element& e : seq) {
        if (e.kind == Grammar::kBytes) break;
        left_refs[r].push_back(e.arg);
        if (min_len[e.arg] > 0) break;
      }
  std::vector<int> color(n, 0);  // 0 new, 1 on the path, 2 done
  std::function<void(int)> visit = [&](int r) {
    color[r] = 1;
    for (int s : left_refs[r]) {
      if (color[s] == 1)
        throw GrammarError("rule '" + names_[s] + "' is left-recursive (directly or through rules that can match nothing)");
      if (color[s] == 0) visit(s);
    }
    color[r] = 2;
  };
  for (size_t r = 0; r < n; ++r)
    if (color[r] == 0) visit(int(r));

  Grammar g;
  g.byte_sets = sets_;
  g.rule_names = names_;
  g.rule_min_bytes = min_len;
  g.alternatives.resize(n);
  g.root = root_it->second;
  for (size_t r = 0; r < n; ++r)
    for (const Sequence& seq : rules_[r]) {
      g.alternatives[r].push_back(int(g.elements.size()));
      const size_t begin = g.elements.size();
      g.elements.insert(g.elements.end(), seq.begin(), seq.end());
      g.elements.push_back({Grammar::kEnd, 0});
      g.min_bytes_from.resize(g.elements.size(), 0);
      uint32_t rest = 0;
      for (size_t i = g.elements.size() - 1; i-- > begin;) {
        const Element& e = g.elements[i];
        rest = saturating_add(rest, e.kind == Grammar::kBytes ? 1 : min_len[e.arg]);
        g.min_bytes_from[i] = rest;
      }
    }
  return g;
}

// ---- UTF-8 ranges -----------------------------------------------------------------------

namespace {

int utf8_encode(uint32_t cp, uint8_t* out) {
  if (cp < 0x80) { out[0] = uint8_t(cp); return 1; }
  if (cp < 0x800) { out[0] = uint8_t(0xC0 | cp >> 6); out[1] = uint8_t(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    out[0] = uint8_t(0xE0 | cp >> 12); out[1] = uint8_t(0x80 | ((cp >> 6) & 0x3F)); out[2] = uint8_t(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = uint8_t(0xF0 | cp >> 18); out[1] = uint8_t(0x80 | ((cp >> 12) & 0x3F));
  out[2] = uint8_t(0x80 | ((cp >> 6) & 0x3F)); out[3] = uint8_t(0x80 | (cp & 0x3F));
  return 4;
}

}  // namespace

// The classic split (RE2, Rust regex-syntax): cut [lo, hi] where the encoded length changes,
// then where the continuation bytes stop spanning their full 0x80-0xBF range, until every
// piece is a plain product of byte ranges.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  if (lo > hi) return;
  if (lo <= 0xDFFF && hi >= 0xD800) {  // no surrogates
    if (lo < 0xD800) utf8_sequences(lo, 0xD7FF, out);
    if (hi > 0xDFFF) utf8_sequences(0xE000, hi, out);
    return;
  }
  for (uint32_t boundary : {0x7Fu, 0x7FFu, 0xFFFFu})
    if (lo <= boundary && hi > boundary) {
      utf8_sequences(lo, boundary, out);
      utf8_sequences(boundary + 1, hi, out);
      return;
    }
  if (hi < 0x80) {
    out.push_back({{uint8_t(lo), uint8_t(hi)}});
    return;
  }
  for (int i = 1; i < 4; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  const int n = utf8_encode(lo, a);
  utf8_encode(hi, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int i = 0; i < n; ++i) seq.push_back({a[i], b[i]});
  out.push_back(seq);
}

// ---- GBNF parser ------------------------------------------------------------------------

namespace {

class GbnfParser {
 public:
  GbnfParser(std::string_view text, GrammarBuilder& b) : s_(text), b_(b) {}

  void parse() {
    skip_space(true);
    while (pos_ < s_.size()) {
      const std::string name = parse_name();
      skip_space(false);
      if (s_.compare(pos_, 3, "::=") != 0) fail("expected '::=' after rule name '" + name + "'");
      pos_ += 3;
      const int id = b_.rule(name);
      if (b_.defined(id)) fail("rule '" + name + "' is defined twice");
      b_.define(id, parse_alternatives(name, /*nested=*/false));
      skip_space(true);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') { ++line; col = 1; } else { ++col; }
    }
    throw GrammarError("grammar line " + std::to_string(line) + " column " + std::to_string(col) + ": " + what);
  }

  static bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }

  // Spaces and comments; newlines too when `newlines` (inside groups, between rules).
  void skip_space(bool newlines) {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else if (c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n')) {
        ++pos_;
      } else {
        break;
      }
    }
  }

  // At a newline outside groups: does the rule go on (the next line starts with '|'
  // or is not a new `name ::=`)?
  bool rule_continues() {
    size_t save = pos_;
    skip_space(true);
    bool more = pos_ < s_.size();
    if (more && s_[pos_] != '|') {
      size_t p = pos_;
      while (p < s_.size() && name_char(s_[p])) ++p;
      size_t q = p;
      while (q < s_.size() && (s_[q] == ' ' || s_[q] == '\t')) ++q;
      if (p > pos_ && s_.compare(q, 3, "::=") == 0) more = false;
    }
    if (!more) pos_ = save;
    return more;
  }

  std::string parse_name() {
    const size_t begin = pos_;
    while (pos_ < s_.size() && name_char(s_[pos_])) ++pos_;
    if (pos_ == begin) fail("expected a rule name");
    return std::string(s_.substr(begin, pos_ - begin));
  }

  std::vector<GrammarBuilder::Sequence> parse_alternatives(const std::string& rule_name, bool nested) {
    std::vector<GrammarBuilder::Sequence> alts;
    alts.push_back(parse_sequence(rule_name, nested));
    while (pos_ < s_.size() && s_[pos_] == '|') {
      ++pos_;
      skip_space(true);
      alts.push_back(parse_sequence(rule_name, nested));
    }
    return alts;
  }

  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (pos_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[pos_]))) fail("expected a hex digit");
      const char c = s_[pos_++];
      v = v * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : (std::tolower(c) - 'a' + 10));
    }
    return v;
  }

  // One character of a literal or class: a code point (escapes decoded). A \xHH escape is a raw byte (> 0x7F
  // only inside classes, as a byte), reported through *raw_byte.
  uint32_t parse_char(bool* raw_byte) {
    *raw_byte = false;
    if (pos_ >= s_.size()) fail("unexpected end of grammar");
    unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c == '\\') {
      ++pos_;
      if (pos_ >= s_.size()) fail("unexpected end of grammar after '\\'");
      const char e = s_[pos_++];
      switch (e) {
        case 'n': return '\n';
        case 't': return '\t';
        case 'r': return '\r';
        case '\\': return '\\';
        case '"': return '"';
        case '\'': return '\'';
        case '[': return '[';
        case ']': return ']';
        case '-': return '-';
        case '^': return '^';
        case '/': return '/';
        case 'x': *raw_byte = true; return parse_hex(2);
        case 'u': return parse_hex(4);
        case 'U': return parse_hex(8);
        default: --pos_; fail(std::string("unknown escape '\\") + e + "'");
      }
    }
    // A UTF-8 encoded character of the grammar text.
    int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || pos_ + len > s_.size()) fail("invalid UTF-8 in the grammar");
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int i = 1; i < len; ++i) cp = cp << 6 | (static_cast<unsigned char>(s_[pos_ + i]) & 0x3F);
    pos_ += len;
    return cp;
  }

  void literal(GrammarBuilder::Sequence& seq, char quote) {
    ++pos_;
    while (pos_ < s_.size() && s_[pos_] != quote) {
      bool raw = false;
      const uint32_t cp = parse_char(&raw);
      if (raw || cp < 0x80) {
        seq.push_back(b_.byte(uint8_t(cp)));
      } else {
        uint8_t buf[4];
        const int n = utf8_encode(cp, buf);
        for (int i = 0; i < n; ++i) seq.push_back(b_.byte(buf[i]));
      }
    }
    if (pos_ >= s_.size()) fail("unterminated literal");
    ++pos_;
  }

  // A class of code points -> one element: a byte set when it is all ASCII (or raw bytes),
  // else a helper rule whose alternatives are the UTF-8 byte sequences.
  Element code_point_class(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negate, const std::bitset<256>& raw_bytes,
                           const std::string& rule_name) {
    std::sort(ranges.begin(), ranges.end());
    if (negate) {
      std::vector<std::pair<uint32_t, uint32_t>> inverse;
      uint32_t next = 0;
      for (auto [lo, hi] : ranges) {
        if (lo > next) inverse.push_back({next, lo - 1});
        next = std::max(next, hi + 1);
      }
      if (next <= 0x10FFFF) inverse.push_back({next, 0x10FFFF});
      ranges = inverse;
    }
    std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
    for (auto [lo, hi] : ranges) utf8_sequences(lo, std::min<uint32_t>(hi, 0x10FFFF), seqs);
    std::bitset<256> single = negate ? std::bitset<256>() : raw_bytes;
    std::vector<GrammarBuilder::Sequence> multi;
    for (const auto& seq : seqs) {
      if (seq.size() == 1) {
        for (int b = seq[0].first; b <= seq[0].second; ++b) single.set(b);
        continue;
      }
      GrammarBuilder::Sequence s;
      for (auto [lo, hi] : seq) {
        std::bitset<256> set;
        for (int b = lo; b <= hi; ++b) set.set(b);
        s.push_back(b_.bytes(set));
      }
      multi.push_back(s);
    }
    if (multi.empty()) {
      if (single.none()) fail("empty character class");
      return b_.bytes(single);
    }
    if (single.any()) multi.insert(multi.begin(), GrammarBuilder::Sequence{b_.bytes(single)});
    const int r = b_.new_rule(rule_name + "-char");
    b_.define(r, std::move(multi));
    return GrammarBuilder::ref(r);
  }

  Element char_class(const std::string& rule_name) {
    ++pos_;  // '['
    bool negate = false;
    if (pos_ < s_.size() && s_[pos_] == '^') {
      negate = true;
      ++pos_;
    }
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    std::bitset<256> raw_bytes;
    while (pos_ < s_.size() && s_[pos_] != ']') {
      bool raw = false;
      uint32_t lo = parse_char(&raw), hi = lo;
      bool raw_hi = raw;
      if (pos_ + 1 < s_.size() && s_[pos_] == '-' && s_[pos_ + 1] != ']') {
        ++pos_;
        hi = parse_char(&raw_hi);
      }
      if (hi < lo) fail("character range is backwards");
      if ((raw || raw_hi) && hi >= 0x80) {
        if (negate) fail("raw bytes above \\x7F cannot be negated in a character class");
        for (uint32_t b = lo; b <= hi; ++b) raw_bytes.set(b);
      } else {
        ranges.push_back({lo, hi});
      }
    }
    if (pos_ >= s_.size()) fail("unterminated character class");
    ++pos_;
    return code_point_class(ranges, negate, raw_bytes, rule_name);
  }

  int parse_int() {
    const size_t begin = pos_;
    long v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      v = v * 10 + (s_[pos_++] - '0');
      if (v > 100000) fail("repetition count too large (at most 100000)");
    }
    if (pos_ == begin) fail("expected a number");
    return int(v);
  }

  // Applies a repetition to the last item of `seq` (elements [item_begin, end)).
  void repeat(GrammarBuilder::Sequence& seq, size_t item_begin, int min, int max /* -1: unbounded */,
              const std::string& rule_name) {
    GrammarBuilder::Sequence item(seq.begin() + long(item_begin), seq.end());
    seq.resize(item_begin);
    if (item.empty()) fail("nothing to repeat");
    for (int i = 0; i < min; ++i) seq.insert(seq.end(), item.begin(), item.end());
    if (max < 0) {  // star ::= item star | (empty)
      const int star = b_.new_rule(rule_name + "-star");
      GrammarBuilder::Sequence again = item;
      again.push_back(GrammarBuilder::ref(star));
      b_.define(star, {again, {}});
      seq.push_back(GrammarBuilder::ref(star));
      return;
    }
    // (max - min) optional items, nested: opt_k ::= item opt_(k+1) | (empty)
    int tail = -1;
    for (int k = max - min; k > 0; --k) {
      const int opt = b_.new_rule(rule_name + "-opt");
      GrammarBuilder::Sequence s = item;
      if (tail >= 0) s.push_back(GrammarBuilder::ref(tail));
      b_.define(opt, {s, {}});
      tail = opt;
    }
    if (tail >= 0) seq.push_back(GrammarBuilder::ref(tail));
  }

  GrammarBuilder::Sequence parse_sequence(const std::string& rule_name, bool nested) {
    GrammarBuilder::Sequence seq;
    size_t item_begin = 0;
    bool have_item = false;
    while (true) {
      skip_space(nested);
      if (pos_ >= s_.size()) break;
      const char c = s_[pos_];
      if (c == '\n') {
        if (!rule_continues()) break;
        continue;
      }
      if (c == '|' || c == ')') break;
      if (c == '"' || c == '\'') {
        item_begin = seq.size();
        literal(seq, c);
        have_item = true;
      } else if (c == '[') {
        item_begin = seq.size();
        seq.push_back(char_class(rule_name));
        have_item = true;
      } else if (c == '.') {
        ++pos_;
        item_begin = seq.size();
        seq.push_back(code_point_class({{0, 0x10FFFF}}, false, {}, rule_name));
        have_item = true;
      } else if (c == '(') {
        ++pos_;
        skip_space(true);
        const int group = b_.new_rule(rule_name + "-group");
        b_.define(group, parse_alternatives(rule_name, /*nested=*/true));
        skip_space(true);
        if (pos_ >= s_.size() || s_[pos_] != ')') fail("expected ')'");
        ++pos_;
        item_begin = seq.size();
        seq.push_back(GrammarBuilder::ref(group));
        have_item = true;
      } else if (name_char(c)) {
        const size_t save = pos_;
        const std::string name = parse_name();
        size_t q = pos_;
        while (q < s_.size() && (s_[q] == ' ' || s_[q] == '\t')) ++q;
        if (s_.compare(q, 3, "::=") == 0) {  // the next rule (missing newline is fine)
          pos_ = save;
          break;
        }
        item_begin = seq.size();
        seq.push_back(GrammarBuilder::ref(b_.rule(name)));
        have_item = true;
      } else if (c == '*' || c == '+' || c == '?') {
        if (!have_item) fail(std::string("'") + c + "' must follow an item");
        ++pos_;
        repeat(seq, item_begin, c == '+' ? 1 : 0, c == '?' ? 1 : -1, rule_name);
        have_item = false;
      } else if (c == '{') {
        if (!have_item) fail("'{' must follow an item");
        ++pos_;
        skip_space(false);
        const int min = parse_int();
        int max = min;
        skip_space(false);
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          skip_space(false);
          max = (pos_ < s_.size() && s_[pos_] == '}') ? -1 : parse_int();
        }
        skip_space(false);
        if (pos_ >= s_.size() || s_[pos_] != '}') fail("expected '}'");
        ++pos_;
        if (max >= 0 && max < min) fail("repetition {m,n} needs m <= n");
        repeat(seq, item_begin, min, max, rule_name);
        have_item = false;
      } else {
        fail(std::string("unexpected character '") + c + "'");
      }
    }
    return seq;
  }

  std::string_view s_;
  size_t pos_ = 0;
  GrammarBuilder& b_;
};

}  // namespace

Grammar parse_gbnf(std::string_view text, const std::string& root) {
  GrammarBuilder b;
  GbnfParser(text, b).parse();
  return b.finish(root);
}

// ---- Matcher ----------------------------------------------------------------------------

Matcher::Matcher(std::shared_ptr<const Grammar> g) : g_(std::move(g)) {
  std::vector<int> stacks;
  for (int alt : g_->alternatives[g_->root]) expand(alt, -1, stacks);
  start_ = intern_state(std::move(stacks));
  if (start_ < 0) throw GrammarError("the grammar matches nothing");
}

int Matcher::node(int pos, int next) {
  const uint64_t key = uint64_t(uint32_t(pos)) << 32 | uint32_t(next);
  auto it = node_ids_.find(key);
  if (it != node_ids_.end()) return it->second;
  const int id = int(nodes_.size());
  const uint32_t rest = next < 0 ? 0 : nodes_[next].min_completion;
  nodes_.push_back({pos, next, saturating_add(g_->min_bytes_from[pos], rest)});
  node_ids_[key] = id;
  return id;
}

// Continue at element `pos`, then with the stack `rest`: every way to reach a byte element
// (or the end of everything, the empty stack -1).
void Matcher::expand(int pos, int rest, std::vector<int>& out) {
  const Element& e = g_->elements[pos];
  switch (e.kind) {
    case Grammar::kEnd:
      if (rest < 0)
        out.push_back(-1);
      else
        expand(nodes_[rest].pos, nodes_[rest].next, out);
      break;
    case Grammar::kBytes: out.push_back(node(pos, rest)); break;
    case Grammar::kRule: {
      // Tail call: nothing to resume after the rule in this alternative, so do not push a frame
      // (keeps `x*` loops at constant stack depth, so their states repeat and masks are cached).
      const int ret = g_->elements[pos + 1].kind == Grammar::kEnd ? rest : node(pos + 1, rest);
      for (int alt : g_->alternatives[e.arg]) expand(alt, ret, out);
      break;
    }
  }
  if (out.size() > kMaxStacks * 4) throw GrammarError("the grammar is too ambiguous (more than 4096 parses at once)");
}

int Matcher::intern_state(std::vector<int> stacks) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  if (stacks.empty()) return -1;
  if (stacks.size() > kMaxStacks) throw GrammarError("the grammar is too ambiguous (more than 4096 parses at once)");
  auto it = state_ids_.find(stacks);
  if (it != state_ids_.end()) return it->second;
  State s;
  s.stacks = stacks;
  s.next.fill(kUnknown);
  for (int st : stacks) {
    const uint32_t m = st < 0 ? 0 : nodes_[st].min_completion;
    s.min_completion = std::min(s.min_completion, m);
    if (st < 0) s.accepting = true;
  }
  const int id = int(states_.size());
  states_.push_back(std::move(s));
  state_ids_[stacks] = id;
  return id;
}

int Matcher::compute_step(int state, uint8_t byte) {
  std::vector<int> out;
  const std::vector<int> stacks = states_[state].stacks;  // a copy: expand may grow states_
  for (int st : stacks) {
    if (st < 0) continue;
    const Node n = nodes_[st];
    if (g_->byte_sets[g_->elements[n.pos].arg].test(byte)) expand(n.pos + 1, n.next, out);
  }
  return intern_state(std::move(out));
}

std::string Matcher::shortest_completion(int state) {
  std::string out;
  while (state >= 0 && min_completion(state) > 0) {
    const uint32_t want = min_completion(state) - 1;
    int next = -1;
    for (int b = 0; b < 256 && next < 0; ++b) {
      const int s = step(state, uint8_t(b));
      if (s >= 0 && min_completion(s) == want) {
        next = s;
        out += char(b);
      }
    }
    state = next;
  }
  return out;
}

}  // namespace cpuchat::grammar
