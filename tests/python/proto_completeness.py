"""Compares proto/onnx.proto (as a compiled descriptor set) with the onnx package's own descriptors:
every message, field (number, type, label, packing, oneof) and enum value must match."""
import sys

from google.protobuf import descriptor_pb2
import onnx.onnx_ml_pb2 as reference


def flatten(file_proto):
    """Maps each message and enum's qualified name to its fields or values."""
    out = {}

    def enums(prefix, items):
        for e in items:
            out[prefix + e.name] = {v.name: v.number for v in e.value}

    def messages(prefix, items):
        for m in items:
            name = prefix + m.name
            out[name] = {
                f.name: (f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1], f.options.packed, f.HasField("oneof_index"))
                for f in m.field
            }
            messages(name + ".", m.nested_type)
            enums(name + ".", m.enum_type)

    messages("", file_proto.message_type)
    enums("", file_proto.enum_type)
    return out


descriptor_set = descriptor_pb2.FileDescriptorSet()
with open(sys.argv[1], "rb") as f:
    descriptor_set.ParseFromString(f.read())
ours = flatten(descriptor_set.file[0])
theirs_proto = descriptor_pb2.FileDescriptorProto()
reference.DESCRIPTOR.CopyToProto(theirs_proto)
theirs = flatten(theirs_proto)

differences = 0
for name in sorted(set(ours) | set(theirs)):
    a, b = ours.get(name), theirs.get(name)
    if a is None or b is None:
        print("only in", "the reference:" if a is None else "ours:", name)
        differences += 1
        continue
    for field in sorted(set(a) | set(b)):
        if a.get(field) != b.get(field):
            print(f"{name}.{field}: ours {a.get(field)}, reference {b.get(field)}")
            differences += 1
print("differences:", differences)
sys.exit(1 if differences else 0)
