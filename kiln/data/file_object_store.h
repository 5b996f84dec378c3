// The file:// object store: a directory (e.g. on a shared filesystem).
// Puts go through a temp name and a rename, so a reader never sees a partial
// object; list() skips those temp names.
#pragma once

#include <memory>
#include <string>

#include "kiln/data/object_store.h"

namespace kiln::data {

// `root` is an absolute directory path; it need not exist yet (puts create it).
std::unique_ptr<ObjectStore> make_file_object_store(std::string root);

}  // namespace kiln::data
