// A context-free grammar over bytes, the GBNF text format that describes one (as in
// llama.cpp), and an incremental matcher. Everything works on bytes, not code points:
// character classes are compiled to UTF-8 byte sequences, so a token that ends half-way
// through a character simply leaves the matcher half-way through that character's bytes.
//
// Matching keeps the set of parse stacks alive after the bytes seen so far (a pushdown
// automaton run breadth-first, like llama.cpp's). Stacks are interned persistent lists
// and sets of stacks are interned too, so a state is one small integer and the byte
// transitions between states are memoised: walking a 128K-token trie from a state that
// was seen before costs an array lookup per trie node.
#pragma once
#include <array>
#include <bitset>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cpuchat::grammar {

struct GrammarError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline constexpr uint32_t kNever = 1u << 30;  // "cannot be completed" (and the saturation point of lengths)

struct Grammar {
  enum Kind : uint8_t { kEnd, kBytes, kRule };
  struct Element {
    Kind kind;
    int32_t arg;  // kBytes: index into byte_sets; kRule: rule index
  };
  // Every alternative is a run of elements ending with kEnd.
  std::vector<Element> elements;
  std::vector<std::bitset<256>> byte_sets;
  std::vector<std::vector<int>> alternatives;  // per rule: start positions in `elements`
  std::vector<std::string> rule_names;
  std::vector<uint32_t> min_bytes_from;  // per element position: fewest bytes from there to the alternative's end
  std::vector<uint32_t> rule_min_bytes;  // per rule: its shortest expansion
  int root = 0;
};

// Builds a Grammar rule by rule. Elements of a sequence are byte classes or rule refs.
class GrammarBuilder {
 public:
  using Sequence = std::vector<Grammar::Element>;
  int rule(const std::string& name);                 // id of a named rule (declared on first use)
  int new_rule(const std::string& base);             // a fresh helper rule named after `base`
  void define(int rule, std::vector<Sequence> alternatives);
  bool defined(int rule) const { return rule < int(defined_.size()) && defined_[rule]; }
  Grammar::Element bytes(const std::bitset<256>& set);
  Grammar::Element byte(uint8_t b);
  static Grammar::Element ref(int rule) { return {Grammar::kRule, rule}; }
  // Checks the grammar (every rule defined, no left recursion, every rule can end) and
  // computes the shortest-completion tables. Throws GrammarError naming the rule.
  Grammar finish(const std::string& root);

 private:
  std::vector<std::string> names_;
  std::map<std::string, int> ids_;
  std::vector<std::vector<Sequence>> rules_;
  std::vector<bool> defined_;
  std::vector<std::bitset<256>> sets_;
  std::unordered_map<std::string, int> set_ids_;
};

// GBNF (llama.cpp's grammar format): `name ::= alternatives`, "literals" with \n \t \r
// \\ \" \xHH \uHHHH \UHHHHHHHH escapes, [character classes] with ranges and ^, `.`,
// ( groups ), postfix * + ? {m} {m,} {m,n}, # comments. Throws GrammarError with the
// line and column of the problem.
Grammar parse_gbnf(std::string_view text, const std::string& root = "root");

// Appends to `alternatives` the UTF-8 byte sequences (one byte range per position) that
// encode exactly the code points in [lo, hi] (surrogates excluded).
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out);

// The parse state after some bytes: an interned set of parse stacks.
class Matcher {
 public:
  explicit Matcher(std::shared_ptr<const Grammar> g);
  int start() const { return start_; }
  // The state after one more byte, or -1 when the byte cannot come next.
  int step(int state, uint8_t byte) {
    int next = states_[state].next[byte];
    if (next == kUnknown) {
      next = compute_step(state, byte);  // may grow states_: index again afterwards
      states_[state].next[byte] = next;
    }
    return next;
  }
  int step(int state, std::string_view bytes) {
    for (unsigned char b : bytes) {
      if (state < 0) return -1;
      state = step(state, b);
    }
    return state;
  }
  bool accepting(int state) const { return states_[state].accepting; }
  // Nothing may follow: the text is a complete sentence and no longer one extends it.
  bool complete(int state) const { return states_[state].accepting && states_[state].stacks.size() == 1; }
  // Fewest bytes that turn the text into a complete sentence.
  uint32_t min_completion(int state) const { return states_[state].min_completion; }
  // The shortest completion's bytes (for tests and error messages).
  std::string shortest_completion(int state);
  const Grammar& grammar() const { return *g_; }
  size_t state_count() const { return states_.size(); }

 private:
  static constexpr int kUnknown = -2;
  static constexpr size_t kMaxStacks = 4096;
  struct Node {
    int pos;   // a kBytes element (top) or the element to resume at (below)
    int next;  // the rest of the stack, -1 for none
    uint32_t min_completion;
  };
  struct State {
    std::vector<int> stacks;  // sorted node ids; -1 is the empty stack (the sentence may end here)
    bool accepting = false;
    uint32_t min_completion = kNever;
    std::array<int, 256> next;
  };
  int node(int pos, int next);
  void expand(int pos, int rest, std::vector<int>& out);
  int intern_state(std::vector<int> stacks);
  int compute_step(int state, uint8_t byte);

  std::shared_ptr<const Grammar> g_;
  std::vector<Node> nodes_;
  std::unordered_map<uint64_t, int> node_ids_;
  std::vector<State> states_;
  std::map<std::vector<int>, int> state_ids_;
  int start_ = -1;
};

}  // namespace cpuchat::grammar
