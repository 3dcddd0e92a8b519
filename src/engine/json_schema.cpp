#include "engine/json_schema.h"

#include <cmath>
#include <map>
#include <optional>
#include <set>

namespace cpuchat::grammar {

using nlohmann::ordered_json;

namespace {

// Whitespace between JSON tokens: bounded, so a rambling model cannot fill its budget with
// it, yet enough for the usual one-space and newline-plus-indent styles.
constexpr const char* kPrimitives = R"(space ::= "" | " " | "\n" [ \t]{0,20}
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string space ":" space value space ( "," space string space ":" space value space )* )? "}"
array ::= "[" space ( value space ( "," space value space )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1F\x7F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? integral ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,2} )?
integral ::= "0" | [1-9] [0-9]{0,14}
integer ::= "-"? integral
boolean ::= "true" | "false"
null ::= "null"
)";

constexpr int64_t kMaxInteger = 999999999999999;  // 15 digits, as `integral` above

// Characters that stand for themselves inside a JSON string (no escape needed).
constexpr const char* kPlainCharClassTail = R"("\\\x00-\x1F\x7F)";

const std::set<std::string>& annotation_keywords() {
  static const std::set<std::string> k = {"title", "description", "$schema", "$id", "$comment", "default",
                                          "examples", "deprecated", "readOnly", "writeOnly", "$anchor",
                                          "strict", "name", "discriminator"};
  return k;
}

const std::set<std::string>& supported_keywords() {
  static const std::set<std::string> k = {
      "type", "properties", "required", "additionalProperties", "enum", "const", "items", "prefixItems",
      "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
      "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
      "nullable", "minProperties", "maxProperties", "uniqueItems"};
  return k;
}

std::string digits_range_same_length(const std::string& a, const std::string& b) {
  if (a.size() == 1) return std::string("[") + a[0] + "-" + b[0] + "]";
  const size_t n = a.size() - 1;
  if (a[0] == b[0]) return std::string("\"") + a[0] + "\" (" + digits_range_same_length(a.substr(1), b.substr(1)) + ")";
  std::vector<std::string> parts;
  char start = a[0], end = b[0];
  if (a.substr(1) != std::string(n, '0')) {
    parts.push_back(std::string("\"") + a[0] + "\" (" + digits_range_same_length(a.substr(1), std::string(n, '9')) + ")");
    ++start;
  }
  std::string tail;
  if (b.substr(1) != std::string(n, '9')) {
    tail = std::string("\"") + b[0] + "\" (" + digits_range_same_length(std::string(n, '0'), b.substr(1)) + ")";
    --end;
  }
  if (start <= end) parts.push_back(std::string("[") + start + "-" + end + "] [0-9]{" + std::to_string(n) + "}");
  if (!tail.empty()) parts.push_back(tail);
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : " | ") + p;
  return out;
}

// Decimal numerals (no leading zeros) of the integers in [lo, hi], 0 <= lo <= hi.
std::string nonneg_range(int64_t lo, int64_t hi) {
  std::vector<std::string> parts;
  const std::string slo = std::to_string(lo), shi = std::to_string(hi);
  for (size_t len = slo.size(); len <= shi.size(); ++len) {
    const std::string a = len == slo.size() ? slo : "1" + std::string(len - 1, '0');
    const std::string b = len == shi.size() ? shi : std::string(len, '9');
    parts.push_back("(" + digits_range_same_length(a, b) + ")");
  }
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : " | ") + p;
  return out;
}

std::string integer_range(int64_t lo, int64_t hi) {
  std::vector<std::string> parts;
  if (lo < 0) parts.push_back("\"-\" (" + nonneg_range(hi < 0 ? -hi : 1, -lo) + ")");
  if (hi >= 0) parts.push_back(nonneg_range(std::max<int64_t>(lo, 0), hi));
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : " | ") + p;
  return "(" + out + ")";
}

// A pattern (ECMA regex subset) -> GBNF for the string's characters, in JSON-escaped form.
class PatternConverter {
 public:
  explicit PatternConverter(const std::string& p) : p_(p) {}
  std::string convert() {
    bool anchored_start = false, anchored_end = false;
    if (!p_.empty() && p_[0] == '^') {
      anchored_start = true;
      pos_ = 1;
    }
    std::string body = alternatives();
    if (pos_ < p_.size() && p_[pos_] == '$') {
      anchored_end = true;
      ++pos_;
    }
    if (pos_ != p_.size()) fail("unsupported syntax at offset " + std::to_string(pos_));
    // An unanchored pattern matches anywhere in the string.
    const std::string any = "[^" + std::string(kPlainCharClassTail) + "]*";
    return (anchored_start ? "" : any + " ") + "(" + body + ")" + (anchored_end ? "" : " " + any);
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw SchemaError("pattern", "'pattern' " + nlohmann::json(p_).dump() + " is not supported: " + why);
  }

  std::string alternatives() {
    std::string out = sequence();
    while (pos_ < p_.size() && p_[pos_] == '|') {
      ++pos_;
      out += " | " + sequence();
    }
    return out;
  }

  static std::string literal_char(char c) {
    if (c == '"') return "\"\\\\\\\"\"";   // JSON \"
    if (c == '\\') return "\"\\\\\\\\\"";  // JSON \\ .
    std::string s(1, c);
    return gbnf_literal(s);
  }

  // Class members (as GBNF class text), excluding what would need a JSON escape.
  static std::string class_member(char c) {
    if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) return "";
    if (c == ']' || c == '[' || c == '-' || c == '^') return std::string("\\") + c;
    return std::string(1, c);
  }

  std::string escape_class(char e, bool in_class) {
    std::string members;
    bool negated = false;
    switch (e) {
      case 'd': members = "0-9"; break;
      case 'w': members = "a-zA-Z0-9_"; break;
      case 's': members = " "; break;
      case 'D': members = "0-9"; negated = true; break;
      case 'W': members = "a-zA-Z0-9_"; negated = true; break;
      case 'S': members = " "; negated = true; break;
      default: return "";
    }
    if (in_class) {
      if (negated) fail("negated escapes inside a class");
      return members;
    }
    return negated ? "[^" + members + kPlainCharClassTail + "]" : "[" + members + "]";
  }

  std::string atom() {
    const char c = p_[pos_];
    if (c == '(') {
      ++pos_;
      if (p_.compare(pos_, 2, "?:") == 0) pos_ += 2;
      else if (pos_ < p_.size() && p_[pos_] == '?') fail("lookarounds and named groups");
      std::string inner = alternatives();
      if (pos_ >= p_.size() || p_[pos_] != ')') fail("unbalanced '('");
      ++pos_;
      return "(" + inner + ")";
    }
    if (c == '[') {
      ++pos_;
      bool negate = false;
      if (pos_ < p_.size() && p_[pos_] == '^') {
        negate = true;
        ++pos_;
      }
      std::string members;
      while (pos_ < p_.size() && p_[pos_] != ']') {
        char m = p_[pos_++];
        if (m == '\\') {
          if (pos_ >= p_.size()) fail("trailing '\\'");
          const char e = p_[pos_++];
          std::string cls = escape_class(e, true);
          if (!cls.empty()) {
            members += cls;
            continue;
          }
          m = e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
        if (m == '-' && !members.empty() && pos_ < p_.size() && p_[pos_] != ']') {
          members += "-";
          continue;
        }
        members += class_member(m);
      }
      if (pos_ >= p_.size()) fail("unbalanced '['");
      ++pos_;
      if (negate) return "[^" + members + kPlainCharClassTail + "]";
      if (members.empty()) fail("a class with no plain characters");
      return "[" + members + "]";
    }
    if (c == '.') {
      ++pos_;
      return "[^" + std::string(kPlainCharClassTail) + "]";
    }
    if (c == '\\') {
      ++pos_;
      if (pos_ >= p_.size()) fail("trailing '\\'");
      const char e = p_[pos_++];
      std::string cls = escape_class(e, false);
      if (!cls.empty()) return cls;
      if (std::isalnum(static_cast<unsigned char>(e)) && e != 'n' && e != 't') fail(std::string("escape \\") + e);
      if (e == 'n' || e == 't') return e == 'n' ? "\"\\\\n\"" : "\"\\\\t\"";
      return literal_char(e);
    }
    if (c == '^' || c == '$') fail("anchors inside the pattern");
    ++pos_;
    if (static_cast<unsigned char>(c) >= 0x80) {  // a UTF-8 character: copy all its bytes
      std::string s(1, c);
      while (pos_ < p_.size() && (static_cast<unsigned char>(p_[pos_]) & 0xC0) == 0x80) s += p_[pos_++];
      return gbnf_literal(s);
    }
    return literal_char(c);
  }

  std::string sequence() {
    std::string out;
    while (pos_ < p_.size() && p_[pos_] != '|' && p_[pos_] != ')' && !(p_[pos_] == '$' && pos_ + 1 == p_.size())) {
      std::string a = atom();
      if (pos_ < p_.size()) {
        const char q = p_[pos_];
        if (q == '*' || q == '+' || q == '?') {
          ++pos_;
          a = "(" + a + ")" + q;
        } else if (q == '{') {
          const size_t close = p_.find('}', pos_);
          if (close == std::string::npos) fail("unbalanced '{'");
          a = "(" + a + ")" + p_.substr(pos_, close - pos_ + 1);
          pos_ = close + 1;
        }
        if (pos_ < p_.size() && p_[pos_] == '?') ++pos_;  // lazy: same language
      }
      out += (out.empty() ? "" : " ") + a;
    }
    return out.empty() ? "\"\"" : out;
  }

  std::string p_;
  size_t pos_ = 0;
};

class SchemaConverter {
 public:
  void set_document(const ordered_json* doc, const std::string& prefix) {
    doc_ = doc;
    prefix_ = prefix;
  }

  // Returns the name of a rule for `schema`.
  std::string visit(const ordered_json& schema, const std::string& name) {
    if (schema.is_boolean()) {
      if (!schema.get<bool>()) throw SchemaError("false", "the schema 'false' matches nothing");
      return "value";
    }
    if (!schema.is_object()) throw SchemaError("type", "a schema must be an object or a boolean, got " + schema.dump());
    for (auto it = schema.begin(); it != schema.end(); ++it) {
      const std::string& k = it.key();
      if (supported_keywords().count(k) || annotation_keywords().count(k) || k.rfind("x-", 0) == 0) continue;
      throw SchemaError(k, "JSON Schema keyword '" + k + "' is not supported");
    }
    if (auto ref = schema.find("$ref"); ref != schema.end()) return visit_ref(*ref);
    if (auto c = schema.find("const"); c != schema.end()) return add(name, gbnf_literal(c->dump()));
    if (auto e = schema.find("enum"); e != schema.end()) {
      if (!e->is_array() || e->empty()) throw SchemaError("enum", "'enum' must be a non-empty array");
      std::string body;
      for (const auto& v : *e) body += (body.empty() ? "" : " | ") + gbnf_literal(v.dump());
      return add(name, body);
    }
    for (const char* key : {"anyOf", "oneOf"})
      if (auto alts = schema.find(key); alts != schema.end()) {
        if (!alts->is_array() || alts->empty()) throw SchemaError(key, std::string("'") + key + "' must be a non-empty array");
        std::string body;
        for (size_t i = 0; i < alts->size(); ++i)
          body += (body.empty() ? "" : " | ") + visit((*alts)[i], name + "-" + std::to_string(i));
        return add(name, with_null(schema, body));
      }
    if (auto all = schema.find("allOf"); all != schema.end()) {
      if (!all->is_array() || all->size() != 1)
        throw SchemaError("allOf", "'allOf' with more than one schema is not supported");
      return visit((*all)[0], name);
    }
    auto type = schema.find("type");
    if (type != schema.end() && type->is_array()) {
      std::string body;
      for (const auto& t : *type) {
        ordered_json one = schema;
        one["type"] = t;
        body += (body.empty() ? "" : " | ") + visit(one, name + "-" + (t.is_string() ? t.get<std::string>() : "t"));
      }
      if (body.empty()) throw SchemaError("type", "'type' must not be an empty array");
      return add(name, body);
    }
    std::string t = type != schema.end() && type->is_string() ? type->get<std::string>() : infer_type(schema);
    if (type != schema.end() && !type->is_string()) throw SchemaError("type", "'type' must be a string or an array of strings");
    std::string body;
    if (t == "object") body = object_rule(schema, name);
    else if (t == "array") body = array_rule(schema, name);
    else if (t == "string") body = string_rule(schema, name);
    else if (t == "integer" || t == "number") body = number_rule(schema, t == "integer");
    else if (t == "boolean") body = "boolean";
    else if (t == "null") body = "null";
    else if (t == "any") body = "value";
    else throw SchemaError("type", "unknown type '" + t + "'");
    return add(name, with_null(schema, body));
  }

  std::string text() const {
    std::string out = kPrimitives;
    for (const auto& [name, body] : rules_) out += name + " ::= " + body + "\n";
    return out;
  }
  std::string add(const std::string& name, const std::string& body) {
    const std::string n = sanitize(name);
    if (n == "root" || !rules_.count(n)) {
      rules_[n] = body;
      return n;
    }
    if (rules_[n] == body) return n;
    for (int i = 1;; ++i)
      if (!rules_.count(n + std::to_string(i))) {
        rules_[n + std::to_string(i)] = body;
        return n + std::to_string(i);
      }
  }

 private:
  std::string sanitize(const std::string& s) const {
    std::string out;
    for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
    return out;
  }

  static std::string with_null(const ordered_json& schema, const std::string& body) {
    auto n = schema.find("nullable");
    return n != schema.end() && n->is_boolean() && n->get<bool>() ? "(" + body + ") | null" : body;
  }

  static std::string infer_type(const ordered_json& s) {
    for (const char* k : {"properties", "additionalProperties", "required", "minProperties", "maxProperties"})
      if (s.contains(k)) return "object";
    for (const char* k : {"items", "prefixItems", "minItems", "maxItems"})
      if (s.contains(k)) return "array";
    for (const char* k : {"minLength", "maxLength", "pattern", "format"})
      if (s.contains(k)) return "string";
    for (const char* k : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
      if (s.contains(k)) return "number";
    return "any";
  }

  std::string visit_ref(const ordered_json& ref) {
    if (!ref.is_string()) throw SchemaError("$ref", "'$ref' must be a string");
    const std::string r = ref.get<std::string>();
    const ordered_json* target = nullptr;
    std::string rule;
    if (r == "#") {
      target = doc_;
      rule = prefix_ + "root-ref";
    } else {
      for (const char* base : {"#/$defs/", "#/definitions/"}) {
        const std::string b = base;
        if (r.rfind(b, 0) != 0) continue;
        const std::string key = r.substr(b.size());
        auto defs = doc_->find(b.substr(2, b.size() - 3));
        if (defs != doc_->end() && defs->is_object() && defs->contains(key)) target = &(*defs)[key];
        rule = prefix_ + "ref-" + key;
      }
    }
    if (!target) throw SchemaError("$ref", "'$ref' " + ref.dump() + " is not supported (only #, #/$defs/... and #/definitions/... within the schema)");
    const std::string n = sanitize(rule);
    if (!refs_.count(n)) {
      refs_.insert(n);
      rules_[n] = "";  // reserve the name: the definition may refer to itself
      const std::string inner = visit(*target, n + "-def");
      rules_[n] = inner;
    }
    return n;
  }

  std::string kv(const std::string& key, const std::string& value_rule) {
    return gbnf_literal(nlohmann::json(key).dump()) + " space \":\" space " + value_rule;
  }

  std::string object_rule(const ordered_json& s, const std::string& name) {
    std::vector<std::pair<std::string, std::string>> props;  // key, value rule
    std::set<std::string> required;
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array()) throw SchemaError("required", "'required' must be an array of strings");
      for (const auto& k : *r) {
        if (!k.is_string()) throw SchemaError("required", "'required' must be an array of strings");
        required.insert(k.get<std::string>());
      }
    }
    auto p = s.find("properties");
    if (p != s.end()) {
      if (!p->is_object()) throw SchemaError("properties", "'properties' must be an object");
      for (auto it = p->begin(); it != p->end(); ++it) props.push_back({it.key(), visit(it.value(), name + "-" + it.key())});
    }
    for (const std::string& k : required)
      if (p == s.end() || !p->contains(k)) throw SchemaError("required", "required property '" + k + "' is not in 'properties'");
    size_t n_required = required.size();
    if (auto mp = s.find("minProperties"); mp != s.end() && (!mp->is_number_unsigned() || mp->get<size_t>() > n_required))
      throw SchemaError("minProperties", "'minProperties' beyond the required properties is not supported");
    if (auto mp = s.find("maxProperties"); mp != s.end() && (!mp->is_number_unsigned() || mp->get<size_t>() < props.size()))
      throw SchemaError("maxProperties", "'maxProperties' below the number of properties is not supported");

    if (props.empty()) {
      auto ap = s.find("additionalProperties");
      if (ap != s.end() && ap->is_boolean() && !ap->get<bool>()) return "\"{\" space \"}\"";
      if (ap == s.end() || ap->is_boolean()) return "object";
      const std::string v = visit(*ap, name + "-additional");
      const std::string pair = "string space \":\" space " + v + " space";
      return "\"{\" space ( " + pair + " ( \",\" space " + pair + " )* )? \"}\"";
    }
    // Properties in declared order; optional ones may be skipped. first-i: none written yet
    // (no comma before the next one); rest-i: some written (a comma before each).
    const size_t n = props.size();
    std::vector<std::string> first(n + 1), rest(n + 1);
    first[n] = add(name + "-first" + std::to_string(n), "\"\"");
    rest[n] = first[n];
    for (size_t i = n; i-- > 0;) {
      const std::string item = kv(props[i].first, props[i].second) + " space";
      const bool req = required.count(props[i].first) > 0;
      rest[i] = add(name + "-rest" + std::to_string(i),
                    "\",\" space " + item + " " + rest[i + 1] + (req ? "" : " | " + rest[i + 1]));
      first[i] = add(name + "-first" + std::to_string(i),
                     item + " " + rest[i + 1] + (req ? "" : " | " + first[i + 1]));
    }
    return "\"{\" space " + first[0] + " \"}\"";
  }

  static int64_t count(const ordered_json& s, const char* key, int64_t dflt) {
    auto it = s.find(key);
    if (it == s.end()) return dflt;
    if (!it->is_number_unsigned()) throw SchemaError(key, std::string("'") + key + "' must be a non-negative integer");
    const uint64_t v = it->get<uint64_t>();
    if (v > 100000) throw SchemaError(key, std::string("'") + key + "' above 100000 is not supported");
    return int64_t(v);
  }

  std::string array_rule(const ordered_json& s, const std::string& name) {
    if (auto u = s.find("uniqueItems"); u != s.end() && !(u->is_boolean() && !u->get<bool>()))
      throw SchemaError("uniqueItems", "'uniqueItems': true is not supported");
    const int64_t min = count(s, "minItems", 0), max = count(s, "maxItems", -1);
    if (max >= 0 && max < min) throw SchemaError("maxItems", "'maxItems' is below 'minItems'");
    std::vector<std::string> tuple;
    if (auto pi = s.find("prefixItems"); pi != s.end()) {
      if (!pi->is_array()) throw SchemaError("prefixItems", "'prefixItems' must be an array");
      for (size_t i = 0; i < pi->size(); ++i) tuple.push_back(visit((*pi)[i], name + "-" + std::to_string(i)));
    }
    std::string item = "value";
    bool more_allowed = true;
    if (auto it = s.find("items"); it != s.end()) {
      if (it->is_boolean() && !it->get<bool>()) more_allowed = false;
      else item = visit(*it, name + "-item");
    }
    if (!tuple.empty()) {  // the prefix in full, then no more items (a stricter, valid subset)
      if (int64_t(tuple.size()) < min) throw SchemaError("minItems", "'minItems' beyond 'prefixItems' is not supported");
      if (max >= 0 && int64_t(tuple.size()) > max) throw SchemaError("maxItems", "'maxItems' below 'prefixItems' is not supported");
      std::string body = "\"[\" space";
      for (size_t i = 0; i < tuple.size(); ++i) body += (i ? " \",\" space " : " ") + tuple[i] + " space";
      return body + " \"]\"";
    }
    if (!more_allowed) {
      if (min > 0) throw SchemaError("minItems", "'minItems' with 'items': false matches nothing");
      return "\"[\" space \"]\"";
    }
    const std::string one = item + " space";
    const std::string next = "\",\" space " + one;
    std::string reps;
    if (max < 0) reps = "( " + next + " )" + (min > 1 ? "{" + std::to_string(min - 1) + ",}" : "*");
    else if (max > 1) reps = "( " + next + " ){" + std::to_string(std::max<int64_t>(min - 1, 0)) + "," + std::to_string(max - 1) + "}";
    const std::string items = one + (reps.empty() ? "" : " " + reps);
    if (max == 0) return "\"[\" space \"]\"";
    return "\"[\" space " + (min == 0 ? "( " + items + " )?" : items) + " \"]\"";
  }

  std::string string_rule(const ordered_json& s, const std::string& name) {
    const bool has_len = s.contains("minLength") || s.contains("maxLength");
    if (auto f = s.find("format"); f != s.end()) {
      if (has_len || s.contains("pattern"))
        throw SchemaError("format", "'format' together with 'pattern' or lengths is not supported");
      if (!f->is_string()) throw SchemaError("format", "'format' must be a string");
      return "\"\\\"\" " + add("format-" + f->get<std::string>(), format_body(f->get<std::string>())) + " \"\\\"\"";
    }
    if (auto p = s.find("pattern"); p != s.end()) {
      if (has_len) throw SchemaError("pattern", "'pattern' together with 'minLength'/'maxLength' is not supported");
      if (!p->is_string()) throw SchemaError("pattern", "'pattern' must be a string");
      return "\"\\\"\" " + add(name + "-pattern", PatternConverter(p->get<std::string>()).convert()) + " \"\\\"\"";
    }
    if (!has_len) return "string";
    const int64_t min = count(s, "minLength", 0), max = count(s, "maxLength", -1);
    if (max >= 0 && max < min) throw SchemaError("maxLength", "'maxLength' is below 'minLength'");
    return "\"\\\"\" char{" + std::to_string(min) + "," + (max >= 0 ? std::to_string(max) : "") + "} \"\\\"\"";
  }

  static std::string format_body(const std::string& f) {
    const std::string date = R"([0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ))";
    const std::string time = R"(( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? "Z")";
    if (f == "date") return date;
    if (f == "time") return time;
    if (f == "date-time") return date + " \"T\" " + time;
    if (f == "uuid") return R"([0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12})";
    if (f == "email") return R"([a-z0-9] [a-z0-9._+-]{0,30} "@" [a-z0-9] [a-z0-9-]{0,30} "." [a-z]{2,6})";
    if (f == "ipv4") {
      const std::string octet = nonneg_range(0, 255);
      return "(" + octet + ") \".\" (" + octet + ") \".\" (" + octet + ") \".\" (" + octet + ")";
    }
    throw SchemaError("format", "string format '" + f + "' is not supported (date, time, date-time, uuid, email, ipv4 are)");
  }

  static std::string number_rule(const ordered_json& s, bool integer) {
    auto bound = [&](const char* key) -> std::optional<double> {
      auto it = s.find(key);
      if (it == s.end()) return std::nullopt;
      if (!it->is_number()) throw SchemaError(key, std::string("'") + key + "' must be a number");
      return it->get<double>();
    };
    auto min = bound("minimum"), max = bound("maximum"), xmin = bound("exclusiveMinimum"), xmax = bound("exclusiveMaximum");
    if (!min && !max && !xmin && !xmax) return integer ? "integer" : "number";
    // Bounded: the integers in range (for a "number" too: a valid, stricter subset).
    double lo = -double(kMaxInteger), hi = double(kMaxInteger);
    if (min) lo = std::max(lo, std::ceil(*min));
    if (xmin) lo = std::max(lo, std::floor(*xmin) + 1);
    if (max) hi = std::min(hi, std::floor(*max));
    if (xmax) hi = std::min(hi, std::ceil(*xmax) - 1);
    if (lo > hi)
      throw SchemaError(min || xmin ? (min ? "minimum" : "exclusiveMinimum") : "maximum",
                        "no integer lies within the bounds (bounded numbers are generated as integers)");
    return integer_range(int64_t(lo), int64_t(hi));
  }

  const ordered_json* doc_ = nullptr;
  std::string prefix_;
  std::map<std::string, std::string> rules_;
  std::set<std::string> refs_;
};

}  // namespace

std::string gbnf_literal(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

std::string json_schema_to_gbnf(const ordered_json& schema) {
  SchemaConverter c;
  c.set_document(&schema, "");
  const std::string top = c.visit(schema, "root-value");
  c.add("root", top);
  return c.text();
}

std::string json_object_gbnf() { return std::string(kPrimitives) + "root ::= object\n"; }

std::string tool_call_gbnf(const std::vector<ToolGrammarSpec>& tools) {
  SchemaConverter c;
  std::string calls;
  for (size_t i = 0; i < tools.size(); ++i) {
    const ToolGrammarSpec& t = tools[i];
    std::string args = "object";
    if (!t.parameters.is_null()) {
      c.set_document(&t.parameters, "f" + std::to_string(i) + "-");
      args = c.visit(t.parameters, "f" + std::to_string(i) + "-params");
    }
    calls += std::string(calls.empty() ? "" : " | ") + gbnf_literal(nlohmann::json(t.name).dump()) +
             " space \",\" space \"\\\"parameters\\\"\" space \":\" space " + args;
  }
  c.add("root", "\"{\" space \"\\\"name\\\"\" space \":\" space ( " + calls + " ) space \"}\"");
  return c.text();
}

}  // namespace cpuchat::grammar
