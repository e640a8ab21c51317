import Core

/// User split codes as stored in `/users/split`.
public enum SplitKind: Int8, CaseIterable, Sendable {
    case train = 0, val = 1, test = 2
    public var name: String { ["train", "val", "test"][Int(rawValue)] }
    public init?(name: String) {
        switch name {
        case "train": self = .train
        case "val", "validation": self = .val
        case "test": self = .test
        default: return nil
        }
    }
}

/// Cold-start episodes of one split: K support and Q query pair indices each,
/// chronological, queries after supports.
public struct Episodes: Equatable, Sendable {
    public var k: Int, q: Int
    /// [N*K] row-major
    public var support: Column<Int64>
    /// [N*Q] row-major
    public var query: Column<Int64>
    /// [N]
    public var user: Column<Int32>
    /// Episodes built in memory.
    public init(k: Int, q: Int, support: [Int64], query: [Int64], user: [Int32]) {
        self.init(k: k, q: q, support: Column(support), query: Column(query), user: Column(user))
    }
    public var count: Int { user.count }
    public init(k: Int, q: Int, support: Column<Int64> = [], query: Column<Int64> = [], user: Column<Int32> = []) {
        self.k = k; self.q = q; self.support = support; self.query = query; self.user = user
    }
    public func supportPairs(_ e: Int) -> Slice<Column<Int64>> { support[(e * k)..<((e + 1) * k)] }
    public func queryPairs(_ e: Int) -> Slice<Column<Int64>> { query[(e * q)..<((e + 1) * q)] }
}

/// The contents of a dataset file (docs/FORMATS.md, "Dataset"): its numbers as
/// `Column`s, in memory when built, mapped from the file when read.
public struct Dataset: Equatable, Sendable {
    public var itemIds: [String] // [V], index 0 = "<pad>"
    public var itemCounts: Column<Int64> // [V]
    public var userIds: [String] // [U]
    public var userSplit: Column<Int8> // [U]
    public var pairUser: Column<Int32> // [P]
    public var prefixOffsets: Column<Int64> // [P+1]
    public var prefixItems: Column<Int32> // [sum]
    public var label: Column<Int32> // [P]
    public var timestamp: Column<Int64> // [P]
    public var reliability: Column<Float> // [P]
    public var episodes: [SplitKind: Episodes]
    public var maxSeqLen: Int
    public var kSupport: Int
    public var qQuery: Int
    public var source: String
    /// The prepare settings that made it (the resolved `data` section as JSON: session gap,
    /// caps of the reliability rule, sequence length, K, Q, split); empty when unknown (files
    /// from before they were recorded, or imported ones).
    public var prepareJSON = ""

    public init(
        itemIds: [String], itemCounts: Column<Int64>, userIds: [String], userSplit: Column<Int8>,
        pairUser: Column<Int32>, prefixOffsets: Column<Int64>, prefixItems: Column<Int32>, label: Column<Int32>,
        timestamp: Column<Int64>, reliability: Column<Float>,
        episodes: [SplitKind: Episodes], maxSeqLen: Int, kSupport: Int, qQuery: Int, source: String
    ) {
        self.itemIds = itemIds; self.itemCounts = itemCounts; self.userIds = userIds; self.userSplit = userSplit
        self.pairUser = pairUser; self.prefixOffsets = prefixOffsets; self.prefixItems = prefixItems
        self.label = label; self.timestamp = timestamp; self.reliability = reliability; self.episodes = episodes
        self.maxSeqLen = maxSeqLen; self.kSupport = kSupport; self.qQuery = qQuery; self.source = source
    }

    /// A dataset built in memory (prepare's arrays become its columns without a copy).
    public init(
        itemIds: [String], itemCounts: [Int64], userIds: [String], userSplit: [Int8], pairUser: [Int32],
        prefixOffsets: [Int64], prefixItems: [Int32], label: [Int32], timestamp: [Int64], reliability: [Float],
        episodes: [SplitKind: Episodes], maxSeqLen: Int, kSupport: Int, qQuery: Int, source: String
    ) {
        self.init(
            itemIds: itemIds, itemCounts: Column(itemCounts), userIds: userIds, userSplit: Column(userSplit),
            pairUser: Column(pairUser), prefixOffsets: Column(prefixOffsets), prefixItems: Column(prefixItems),
            label: Column(label), timestamp: Column(timestamp), reliability: Column(reliability),
            episodes: episodes, maxSeqLen: maxSeqLen, kSupport: kSupport, qQuery: qQuery, source: source)
    }

    public var nItems: Int { itemIds.count }
    public var nPairs: Int { label.count }
    public var nUsers: Int { userIds.count }

    /// Prefix items of pair p, oldest first.
    @inline(__always) public func prefix(_ p: Int) -> Slice<Column<Int32>> {
        prefixItems[Int(prefixOffsets[p])..<Int(prefixOffsets[p + 1])]
    }
    @inline(__always) public func prefixLength(_ p: Int) -> Int { Int(prefixOffsets[p + 1] - prefixOffsets[p]) }

    public func episodes(_ s: SplitKind) -> Episodes { episodes[s] ?? Episodes(k: kSupport, q: qQuery) }

    /// The dataset fingerprint: hex SHA-256 over the datasets in this order —
    /// vocab/item_ids, vocab/item_counts, users/ids, users/split, pairs/user,
    /// pairs/prefix_offsets, pairs/prefix_items, pairs/label, pairs/timestamp,
    /// pairs/reliability, then episodes/{train,val,test}/{support,query,user}.
    /// Each dataset contributes its path in UTF-8 and a NUL byte, then its
    /// elements: numbers as little-endian bytes of their stored type, strings as
    /// UTF-8 followed by a NUL byte.
    public var fingerprint: String {
        #if !_endian(little)
        #error("the fingerprint hashes numbers as they lie in memory: little-endian only")
        #endif
        var h = SHA256()
        func name(_ s: String) { h.update(string: s); h.update(array: [UInt8(0)]) }
        func strings(_ path: String, _ a: [String]) {
            name(path)
            for s in a { h.update(string: s); h.update(array: [UInt8(0)]) }
        }
        // Numbers lie in memory as little-endian bytes of their stored type (x86-64, arm64): hashed in place.
        func numbers<T>(_ path: String, _ a: Column<T>) {
            name(path)
            a.withUnsafeBufferPointer { h.update(UnsafeRawBufferPointer($0)) }
        }
        strings("vocab/item_ids", itemIds)
        numbers("vocab/item_counts", itemCounts)
        strings("users/ids", userIds)
        numbers("users/split", userSplit)
        numbers("pairs/user", pairUser)
        numbers("pairs/prefix_offsets", prefixOffsets)
        numbers("pairs/prefix_items", prefixItems)
        numbers("pairs/label", label)
        numbers("pairs/timestamp", timestamp)
        numbers("pairs/reliability", reliability)
        for s in SplitKind.allCases {
            let e = episodes(s)
            numbers("episodes/\(s.name)/support", e.support)
            numbers("episodes/\(s.name)/query", e.query)
            numbers("episodes/\(s.name)/user", e.user)
        }
        return h.finalizeHex()
    }
}
