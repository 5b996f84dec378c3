// Kiln's madvise (Note [Kiln's madvise], madvise_hook.cc).
#pragma once

namespace kiln::comm {

// Whether the dynamic linker binds madvise to Kiln's in this process, so
// that memory shared in place keeps private memory's meaning for every
// library that calls it. Thread-safe.
bool madvise_hook_is_active();

}  // namespace kiln::comm
