// The op schemas, defined once; implementations live in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import eexit._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(eexit, m) {
  m.def(
      "exit_gate(Tensor logits, float threshold, str criterion=\"confidence\") -> "
      "(Tensor exit_idx, Tensor keep_idx, Tensor pred, Tensor score)");
  m.def("compact(Tensor[] tensors, Tensor index) -> Tensor[]");
  m.def("direct_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] padding) -> Tensor");
  m.def("local_response_norm(Tensor x, int size, float alpha, float beta, float k) -> Tensor");
  m.def("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) -> Tensor");
  m.def(
      "append_channels(Tensor(a!) buf, Tensor src, int c0, Tensor(b!)? pre=None, Tensor? scale=None, "
      "Tensor? shift=None) -> ()");
}
