// The checkpoint write path's filesystem is kiln::Fs (kiln/base/fs.h), the
// one seam every durable writer shares; these names keep ckpt::Fs and friends
// working for code written against them.
#pragma once

#include "kiln/base/fs.h"

namespace kiln::ckpt {

using kiln::Fs;
using kiln::FsWriter;
using kiln::write_file_atomic;
using kiln::write_file_synced;

}  // namespace kiln::ckpt
