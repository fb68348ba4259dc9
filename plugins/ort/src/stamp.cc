// The hash of the sources this library was built from, kept in the file as plain bytes.
//
// build.sh passes ONNXVQ_SOURCE_STAMP: the first 16 hex digits of the sha256 over
// `sha256sum src/* build.sh exports.map` (C locale). onnxvq.plugins.native computes the same from
// the installed sources and reads this string from the .so before ONNX Runtime loads it: a library
// built from other sources (a node it does not know, a changed attribute layout) crashed sessions,
// so a mismatch is skipped (or refused) instead of loaded. Not exported: nothing calls it.
#ifndef ONNXVQ_SOURCE_STAMP
#error "build with plugins/ort/build.sh: it defines ONNXVQ_SOURCE_STAMP"
#endif

extern "C" __attribute__((used)) const char onnxvq_source_stamp[] =
    "onnxvq-source-stamp:" ONNXVQ_SOURCE_STAMP ";";
