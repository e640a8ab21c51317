import Core
import Foundation
import GRU4Rec

/// A model's weights as a safetensors file (https://github.com/huggingface/safetensors):
/// an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
/// byte range, then the tensors' bytes. Tensors keep the checkpoint's PyTorch names
/// (embedding.weight, gru.weight_ih_l0, …, fc.bias), so `load_state_dict` takes them as they are.
public enum SafetensorsFile {
    /// Writes the checkpoint's model tensors (float32, row-major) atomically; `metadata` goes to
    /// the header's `__metadata__` (string values, as the format requires).
    public static func write(_ c: Checkpoint, metadata: [(String, String)], to path: String) throws {
        var header: [(String, JSON)] = [("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) }))]
        var offset = 0
        for e in c.layout.entries {
            let bytes = e.count * MemoryLayout<Float>.size
            header.append(
                (
                    e.name,
                    .object([
                        ("dtype", .string("F32")), ("shape", .array(e.shape.map { .int($0) })),
                        ("data_offsets", .array([.int(offset), .int(offset + bytes)]))
                    ])
                ))
            offset += bytes
        }
        var text = Array(JSON.object(header).compact.utf8)
        // Pad with spaces so the tensors start 8-byte aligned (the format allows trailing spaces).
        while (8 + text.count) % 8 != 0 { text.append(0x20) }
        var out = Data()
        var n = UInt64(text.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: text)
        for e in c.layout.entries {
            for v in UnsafeBufferPointer(start: c.params.ptr + e.offset, count: e.count) {
                var b = v.bitPattern.littleEndian
                withUnsafeBytes(of: &b) { out.append(contentsOf: $0) }
            }
        }
        try writeAtomically(to: path) { tmp in
            guard FileManager.default.createFile(atPath: tmp, contents: out) else {
                throw MetatrainError("\(path): cannot write")
            }
        }
    }
}
