import ArgumentParser
import Core
import Foundation
import Recommendation
import Storage

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Writes a checkpoint's model as safetensors, with its course vocabulary beside it, for PyTorch.",
        discussion: """
            The tensors keep the checkpoint's PyTorch names (embedding.weight,
            gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0,
            fc.weight, fc.bias), so the notebooks' nn.Embedding / nn.GRU / nn.Linear
            module loads them with load_state_dict(safetensors.torch.load_file(...)).
            The vocabulary goes to the same name with .vocab.json: item_ids[i] is the
            course of row i (row 0 is padding). docs/SERVING.md shows the PyTorch code.
            Example:
              metatrain export --checkpoint runs/fomaml/final.h5 --out model.safetensors
            """)

    @Option(help: "Checkpoint to export.") var checkpoint: String
    @Option(help: "Dataset the checkpoint was trained on (needed only for format-1 checkpoints).") var data: String?
    @Option(help: "Output file (.safetensors); the vocabulary goes beside it as .vocab.json.") var out: String

    /// `model.safetensors` → `model.vocab.json`.
    static func vocabPath(for out: String) -> String {
        (out.hasSuffix(".safetensors") ? String(out.dropLast(".safetensors".count)) : out) + ".vocab.json"
    }

    func run() throws {
        let model = try Recommender(checkpoint: checkpoint, data: data)
        let ck = model.checkpoint
        let d = ck.dims
        try SafetensorsFile.write(
            ck,
            metadata: [
                ("format", "pt"), ("source", checkpoint), ("checkpoint_sha256", model.sha256),
                ("kind", ck.kind.rawValue), ("algorithm", ck.algorithm), ("iteration", String(ck.iteration)),
                ("num_items", String(d.V)), ("embedding_dim", String(d.E)), ("hidden_dim", String(d.H))
            ], to: out)
        let vocab = JSON.object([
            ("item_ids", .array(model.itemIds.map { .string($0) })), ("padding_index", .int(0)),
            ("item_counts", .array(model.itemCounts.map { .int(Int($0)) })),
            ("max_seq_len", .int(model.data.maxSeqLen)),
            ("model", .object([("num_items", .int(d.V)), ("embedding_dim", .int(d.E)), ("hidden_dim", .int(d.H))])),
            ("checkpoint_sha256", .string(model.sha256))
        ])
        let vocabOut = Self.vocabPath(for: out)
        try writeFileAtomically(vocabOut, contents: vocab.pretty)
        print("wrote \(out) (\(ck.layout.entries.count) tensors, \(ck.layout.count) floats) and \(vocabOut)")
    }
}
