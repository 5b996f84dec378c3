// The object store moved below kiln/data, to kiln/objstore/object_store.h;
// these names keep code written against kiln::data's spelling working.
// New code: include kiln/objstore/object_store.h and say objstore::.
#pragma once

#include "kiln/objstore/object_store.h"

namespace kiln::data {

using objstore::ObjectInfo;
using objstore::ObjectStore;
using objstore::open_object_store;

}  // namespace kiln::data
