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

// Which chat template a tokenizer's model family uses.
enum class ChatFormat { Llama3, Llama2, Plain };

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

  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;

  int bos_id = -1;
  std::vector<int> eos_ids;  // every id that ends a turn or the text
  ChatFormat chat_format = ChatFormat::Plain;
  // SentencePiece-style tokenizers strip the leading space of the first piece when decoding.
  bool strip_leading_space_on_decode = false;
};

// Loads a tokenizer file, detecting its format: HF tokenizer.json, Meta tiktoken
// tokenizer.model, SentencePiece tokenizer.model, llama2.c tokenizer.bin.
// vocab_size_hint: the model's vocabulary size (for llama2.c .bin files), 0 if unknown.
// Throws std::runtime_error with a one-line message naming the file on any problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int vocab_size_hint = 0);

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
  std::string flush();       // whatever is held back (invalid bytes become U+FFFD)
 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Renders messages with the tokenizer's chat format and encodes them (with BOS).
// Message contents are encoded with special-token parsing off, so user text that looks
// like "<|eot_id|>" cannot forge a turn. add_generation_prompt opens the assistant turn.
std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt = true);
// The same prompt as text, for display and tests.
std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true);

}  // namespace cpuchat
