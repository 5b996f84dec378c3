// `import kiln_torch`: registers the "kiln" backend with
// torch.distributed, so that `init_process_group("kiln")` forms a
// ProcessGroupKiln (process_group_kiln.h) through the group's store.
#include <pybind11/chrono.h>
#include <torch/python.h>

#include "python/kiln_torch/process_group_kiln.h"

namespace py = pybind11;
using kiln::torch_backend::ProcessGroupKiln;

PYBIND11_MODULE(kiln_torch, m) {
  m.doc() = "Kiln's collectives as a torch.distributed backend: init_process_group(\"kiln\")";
  // ProcessGroup's Python type must exist before ours derives from it.
  py::module_ dist = py::module_::import("torch.distributed");
  py::class_<ProcessGroupKiln, c10d::ProcessGroup, c10::intrusive_ptr<ProcessGroupKiln>>(
      m, "ProcessGroupKiln")
      .def(py::init([](const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                       std::chrono::milliseconds timeout) {
             return c10::make_intrusive<ProcessGroupKiln>(store, rank, size, timeout);
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout"),
           // Forming the group blocks until every rank joined.
           py::call_guard<py::gil_scoped_release>())
      .def("describe", &ProcessGroupKiln::describe,
           "how the group connected, e.g. 'rank 1/4, shm:3, 1 host'");
  // The creator PyTorch calls: (store, rank, size, timeout) -> ProcessGroup.
  py::object backend = dist.attr("Backend");
  if (!backend.attr("_plugins").contains("KILN")) {
    backend.attr("register_backend")("kiln", m.attr("ProcessGroupKiln"));
  }
}
