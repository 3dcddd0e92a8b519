// JSON Schema -> GBNF (grammar.h), in the spirit of llama.cpp's json-schema-to-grammar but
// with bounded whitespace and no trailing whitespace after the document, so a constrained
// answer ends as soon as its last brace closes.
//
// The grammar may be stricter than the schema (every sentence it accepts validates): a
// number with bounds is generated as an integer in range, `additionalProperties` besides
// declared `properties` is not generated, dates keep to days 01-28, patterns keep to
// characters that need no JSON escape. Keywords it cannot honour throw SchemaError naming
// the keyword, never a silently unconstrained answer.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/grammar.h"

namespace cpuchat::grammar {

struct SchemaError : GrammarError {
  SchemaError(const std::string& keyword, const std::string& message)
      : GrammarError(message), keyword(keyword) {}
  std::string keyword;  // the offending keyword ("allOf", "$ref", ...)
};

// A grammar (GBNF text, root rule "root") for one JSON document matching `schema`.
std::string json_schema_to_gbnf(const nlohmann::ordered_json& schema);

// Any JSON object (response_format json_object).
std::string json_object_gbnf();

// One Llama 3.1 custom tool call, {"name": "<one of tools>", "parameters": <its arguments>}.
struct ToolGrammarSpec {
  std::string name;
  nlohmann::ordered_json parameters;  // JSON Schema of the arguments (null: any object)
};
std::string tool_call_gbnf(const std::vector<ToolGrammarSpec>& tools);

// "text" as a GBNF string literal (quotes included), bytes escaped as needed.
std::string gbnf_literal(const std::string& text);

}  // namespace cpuchat::grammar
