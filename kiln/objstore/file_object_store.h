// The file:// object store: a directory (e.g. on a shared filesystem).
// A put is an atomic, durable replace (temp name, fsync, rename, fsync of
// the directory): a reader never sees a partial object, a crash never loses
// one whose put returned, and list() skips the temp names of puts in flight.
#pragma once

#include <memory>
#include <string>

#include "kiln/base/fs.h"
#include "kiln/objstore/object_store.h"

namespace kiln::objstore {

// `root` is an absolute directory path; it need not exist yet (puts create
// it). Puts write through `fs` (null: the real filesystem; tests inject
// faults); it must outlive the store.
std::unique_ptr<ObjectStore> make_file_object_store(std::string root, Fs* fs = nullptr);

}  // namespace kiln::objstore
