import Datasets
import ExperimentConfig
import Storage

extension Checkpoint {
    /// A checkpoint that can be used without its dataset: the course vocabulary and label
    /// counts, the prepare settings (the dataset's own, else the run's `data` section) and the
    /// adaptation policy of `config` (docs/FORMATS.md, "Checkpoint").
    mutating func carryUse(of dataset: Dataset, config: Config) {
        itemIds = dataset.itemIds
        itemCounts = Array(dataset.itemCounts)
        prepareJSON = dataset.prepareJSON.isEmpty ? config.dataSectionJSON : dataset.prepareJSON
        adaptationJSON = config.adaptationJSON
    }
}
