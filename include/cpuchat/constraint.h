// The engine's hook for constrained decoding: something that, at every sampling step,
// rules out the tokens that may not come next (a grammar, a JSON Schema, a tool call
// shape) and is told which token was sampled. The engine calls, per generated token:
//   mask(logits) -> sample -> (stop at EOS) -> accept(id) -> stop if finished().
#pragma once

namespace cpuchat {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets logits of tokens that may not come next to -inf (EOS only where the grammar may end). `remaining` is
  // the token budget left including this token, so the constraint can force the shortest valid completion.
  virtual void mask(float* logits, int vocab, int remaining) = 0;
  virtual void accept(int id) = 0;        // advance with the sampled token
  virtual bool finished() const = 0;      // output complete: generation ends with finish "stop"
};

}  // namespace cpuchat
