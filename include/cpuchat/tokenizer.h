// Tokenizers (Llama 3 byte-level BPE, SentencePiece, llama2.c/GGUF score BPE) and a
// streaming decoder that never emits half a UTF-8 character. No libtorch here.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cpuchat {

// Which chat template a tokenizer's model family uses (see render_chat). Loaders pick:
// Llama3 when the vocabulary has <|start_header_id|>, <|end_header_id|> and <|eot_id|>;
// Llama2 for Llama 2's 32000-piece SentencePiece vocabulary (<s> = 1, </s> = 2); Plain
// otherwise (e.g. the 512-piece TinyStories vocabulary). A tokenizer cannot tell a base
// model from a chat model, so a model loader may overwrite chat_format (stories15M uses
// Llama 2's vocabulary but is a base model).
// Llama31: Llama 3.1's template (its "Cutting Knowledge Date" system preamble and tool
// calling), for Llama 3 vocabularies that name <|python_tag|>.
enum class ChatFormat { Llama31, Llama3, Llama2, Plain };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text without BOS. With parse_special, special-token text ("<|eot_id|>")
  // becomes its single id; without, it is encoded as ordinary text (safe for user content).
  virtual std::vector<int> encode(std::string_view text, bool parse_special = false) const = 0;
  // The raw bytes one token stands for (may be part of a UTF-8 character).
  // Special tokens decode to their text.
  virtual std::string token_bytes(int id) const = 0;
  virtual int vocab_size() const = 0;
  // The id of a special token by its text, e.g. "<|eot_id|>", if the vocabulary has it.
  virtual std::optional<int> special_id(std::string_view text) const = 0;
  virtual bool is_special(int id) const = 0;

  // The tokens' bytes as text: ill-formed UTF-8 becomes U+FFFD, and with
  // strip_leading_space_on_decode the first non-special piece loses its leading space.
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;

  int bos_id = -1;
  std::vector<int> eos_ids;  // every id that ends a turn or the text
  ChatFormat chat_format = ChatFormat::Plain;
  // SentencePiece-style tokenizers strip the leading space of the first piece when decoding.
  bool strip_leading_space_on_decode = false;
};

// Loads a tokenizer file, detecting its format: HF tokenizer.json, Meta tiktoken
// tokenizer.model, SentencePiece tokenizer.model, llama2.c tokenizer.bin. A directory
// loads its tokenizer.json, else its tokenizer.model.
// vocab_size_hint: the model's vocabulary size (for llama2.c .bin files), 0 if unknown.
// Throws std::runtime_error with a one-line message naming the file on any problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int vocab_size_hint = 0);
// The same from a file's contents already in memory (`name` is only for messages).
std::unique_ptr<Tokenizer> load_tokenizer_from_memory(const std::string& name, const std::string& contents,
                                                      int vocab_size_hint = 0);

// A score-ordered BPE (SentencePiece "llama" style with byte fallback) built from a
// vocabulary in memory: used for llama2.c .bin tokenizers and GGUF-embedded ones.
std::unique_ptr<Tokenizer> make_score_bpe_tokenizer(std::vector<std::string> pieces,
                                                    std::vector<float> scores,
                                                    std::vector<int> token_types,  // GGUF types, may be empty
                                                    int bos_id, int eos_id);
// A byte-level BPE (GPT-2 / Llama 3 style) from GGUF "gpt2" vocab + merges.
std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(std::vector<std::string> tokens,
                                                   std::vector<std::string> merges,
                                                   std::vector<int> token_types);

// Turns token ids into text as they are generated: holds back bytes of an incomplete
// UTF-8 character until the rest arrives, so no chunk is ever invalid UTF-8.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int id);  // text that became complete (possibly empty)
  // The bytes `id` adds to the text if pushed next: its piece, less the leading space the
  // first text piece drops (SentencePiece). What a logprob reports as the token's text.
  std::string piece(int id) const;
  std::string flush();       // whatever is held back (invalid bytes become U+FFFD)
 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

struct ChatToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // the arguments object as JSON text (as OpenAI clients send it)
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool" (a tool's result)
  std::string content;
  std::vector<ChatToolCall> tool_calls;  // an assistant turn that calls tools
  std::string tool_call_id;              // a tool result: the call it answers
};

// Tools offered to the model (OpenAI `tools`), rendered the way Llama 3.1 was trained.
struct ChatTools {
  std::string definitions_json;        // JSON array of tool definitions, keys in the order sent; "" for none
  bool in_user_message = true;         // Llama 3.1: in the first user message (its default) or the system turn
  std::vector<std::string> builtin;    // Llama 3.1 built-in tools: brave_search, wolfram_alpha, code_interpreter
  std::string date = "26 Jul 2024";    // the template's "Today Date"
  bool any() const { return !definitions_json.empty() || !builtin.empty(); }
};

// The Llama 3.1 custom-tool instruction text that precedes the tool definitions, and one
// call as Llama 3.1 writes it: {"name": "...", "parameters": {...}} (Python json.dumps style).
std::string llama31_tool_call_text(const ChatToolCall& call);

// Renders messages with the tokenizer's chat format and encodes them (with BOS).
// Message contents are encoded with special-token parsing off, so user text that looks
// like "<|eot_id|>" cannot forge a turn. add_generation_prompt opens the assistant turn.
std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt = true, const ChatTools& tools = {});
// The same prompt as text, for display and tests. Contents are trimmed. Formats:
//   Llama3: <|begin_of_text|> then per message <|start_header_id|>{role}<|end_header_id|>\n\n
//           {content}<|eot_id|>; the generation prompt is <|start_header_id|>assistant<|end_header_id|>\n\n
//   Llama2: Meta's <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s> per
//           exchange; the last user turn stays open (add_generation_prompt changes nothing).
//   Plain:  BOS + all contents joined with single spaces, so a base/story model continues the
//           text (no role labels).
//   Llama31: Meta's Llama 3.1 Instruct template exactly (as transformers renders it): a system
//           turn with "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
//           before the system prompt; tools as JSON (indent 4) in the first user message or the
//           system turn; tool calls as {"name": ..., "parameters": ...}; tool results in an
//           ipython turn (JSON-encoded); several calls in one turn go on separate lines.
// The other formats have no tool syntax: tool definitions, calls and results become text
// (the Llama 3.1 instruction in the first user message, calls as JSON, results as user turns);
// Plain (base models) gets the calls and results but no tool instructions.
// Roles other than system/user/assistant/tool throw std::invalid_argument, as does a bad
// tool call (arguments that are not a JSON object) or tools without a user message.
std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true, const ChatTools& tools = {});

}  // namespace cpuchat
