// Note [16-bit floats accumulate in float32] (reduce.h) for the algorithms
// that run whole on a float32 copy.
#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/collectives.h"

namespace kiln::comm::algo {

Status allreduce_in_float32(const Env& env, const AllreduceArgs& a,
                            const std::function<Status(const Env&, const AllreduceArgs&)>& run) {
  auto* wide = static_cast<float*>(env.scratch->get(a.count * sizeof(float), Scratch::kWide));
  widen_to_float32(a.dtype, a.send, wide, a.count);
  KILN_RETURN_IF_ERROR(run(env, {wide, wide, a.count, DataType::kFloat32, a.op}));
  narrow_from_float32(a.dtype, wide, a.recv, a.count);
  return Status::ok();
}

}  // namespace kiln::comm::algo
