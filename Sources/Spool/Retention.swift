import Foundation
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// A standby the receiver has served, remembered across restarts: by slot name when it streams with
/// `primary_slot_name`, by application_name otherwise. Its replayed position holds WAL back from pruning,
/// also while it is down for maintenance.
public struct StandbyRecord: Codable, Sendable, Equatable {
    public var name: String
    public var viaSlot: Bool
    public var replayedLSN: String
    public var updatedAt: Date

    public init(name: String, viaSlot: Bool, replayedLSN: LSN, updatedAt: Date) {
        self.name = name
        self.viaSlot = viaSlot
        self.replayedLSN = replayedLSN.description
        self.updatedAt = updatedAt
    }

    public var replayed: LSN { LSN(replayedLSN) ?? .invalid }
}

public enum StandbyRegistry {
    static func directory(_ systemDirectory: String) -> String { systemDirectory + "/standbys" }

    static func fileName(_ name: String, viaSlot: Bool) -> String {
        let safe = name.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" ? $0 : "_" }
        return (viaSlot ? "slot-" : "app-") + String(safe) + ".json"
    }

    public static func save(_ record: StandbyRecord, systemDirectory: String) throws {
        let dir = directory(systemDirectory)
        try FileIO.makeDirectory(dir)
        let data = try JSONEncoder.walship.encode(record)
        try Array(data).withUnsafeBytes {
            try FileIO.writeAtomically($0, to: dir + "/" + fileName(record.name, viaSlot: record.viaSlot), directory: dir)
        }
    }

    public static func list(systemDirectory: String) throws -> [StandbyRecord] {
        let dir = directory(systemDirectory)
        guard FileIO.isDirectory(dir) else { return [] }
        return try FileIO.listDirectory(dir).filter { $0.hasSuffix(".json") }.map { name in
            let bytes = try FileIO.readWholeFile(dir + "/" + name, maxBytes: 1 << 16)
            do { return try JSONDecoder.walship.decode(StandbyRecord.self, from: Data(bytes)) } catch {
                throw SpoolError(.corrupt, "\(dir)/\(name) is damaged: \(error)")
            }
        }
    }

    public static func forget(name: String, viaSlot: Bool, systemDirectory: String) throws {
        try FileIO.remove(directory(systemDirectory) + "/" + fileName(name, viaSlot: viaSlot))
    }
}

/// What may be removed from a system's spool, and why. The rule: keep the newest `retainBackups` complete
/// backups and all WAL from the oldest kept backup's start onward; never remove WAL a known standby has not
/// replayed; with no complete backup, remove nothing.
public struct RetentionPlan: Sendable, Equatable {
    public var removeBackups: [String]
    public var removeSegments: [SegmentName]
    /// WAL from here on is kept; nil when nothing may be pruned.
    public var keepFrom: LSN?
    public var reasons: [String]

    /// A standby holding back more than this is reported.
    public static let holdBackWarningBytes: UInt64 = 1 << 30

    public static func compute(
        backups: [BackupInfo], segments: [SegmentName], standbys: [StandbyRecord], retainBackups: Int,
        segmentSize: WALSegmentSize
    ) -> RetentionPlan {
        let complete = backups.filter { $0.status == .complete }.sorted { $0.id < $1.id }
        guard retainBackups > 0, let oldestKept = complete.suffix(retainBackups).first, let backupStart = LSN(oldestKept.startLSN)
        else {
            return RetentionPlan(
                removeBackups: [], removeSegments: [], keepFrom: nil,
                reasons: ["no complete base backup yet: nothing is pruned"])
        }
        var keepFrom = segmentSize.segmentStart(of: backupStart)
        var reasons = [
            "keeping the newest \(retainBackups) complete backup(s); the oldest kept, \(oldestKept.id), starts at \(backupStart)"
        ]
        for standby in standbys where standby.replayed.isValid && segmentSize.segmentStart(of: standby.replayed) < keepFrom {
            let held = keepFrom.bytesAfter(segmentSize.segmentStart(of: standby.replayed))
            if held > holdBackWarningBytes {
                reasons.append(
                    "WARNING: standby \(standby.name) (last seen \(standby.updatedAt)) holds back \(held >> 20) MiB of WAL; if it is gone for good, remove its file in standbys/"
                )
            }
            keepFrom = segmentSize.segmentStart(of: standby.replayed)
            reasons.append("standby \(standby.name) has replayed only to \(standby.replayedLSN); its WAL is kept")
        }
        let removeBackups = backups.filter { $0.id < oldestKept.id }.map(\.id)
        let removeSegments = segments.filter { $0.endLSN <= keepFrom }.sorted()
        return RetentionPlan(removeBackups: removeBackups, removeSegments: removeSegments, keepFrom: keepFrom, reasons: reasons)
    }
}

public enum Pruner {
    /// Plans (and unless `dryRun`, applies) retention for one system. Only completed segments and whole backups
    /// are removed; the in-progress segment and history files never are.
    public static func prune(
        systemDirectory: String, segmentSize: WALSegmentSize, retainBackups: Int, dryRun: Bool
    ) throws -> RetentionPlan {
        let walDirectory = systemDirectory + "/wal"
        let segments = try FileIO.listDirectory(walDirectory).compactMap { name -> SegmentName? in
            name.hasSuffix(".lz4") ? SegmentName(name.dropLast(4), segmentSize: segmentSize) : nil
        }
        let plan = RetentionPlan.compute(
            backups: try BackupCatalog.list(systemDirectory: systemDirectory), segments: segments,
            standbys: try StandbyRegistry.list(systemDirectory: systemDirectory),
            retainBackups: retainBackups, segmentSize: segmentSize)
        guard !dryRun else { return plan }
        for id in plan.removeBackups {
            try FileIO.removeDirectory(systemDirectory + "/base/" + id)
        }
        for segment in plan.removeSegments { try FileIO.remove(walDirectory + "/\(segment).lz4") }
        if !plan.removeSegments.isEmpty { try FileIO.syncDirectory(walDirectory) }
        if !plan.removeBackups.isEmpty { try FileIO.syncDirectory(systemDirectory + "/base") }
        return plan
    }

    /// Segment size recorded for a system directory.
    public static func segmentSize(systemDirectory: String) throws -> WALSegmentSize {
        try SystemConfiguration.read(directory: systemDirectory).segmentSize
    }
}
