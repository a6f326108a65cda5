import LZ4Codec
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// Read-only access to a spool, for `walship restore-wal` (run by PostgreSQL as its OS user, possibly while the
/// receiver writes). It takes no lock and changes nothing.
public struct SpoolReader: Sendable {
    public let systemIdentifier: UInt64
    public let segmentSize: WALSegmentSize
    public let walDirectory: String

    /// Opens the spool of `system`, or of the only system in the spool when `system` is nil.
    public init(root: String, system: UInt64?) throws {
        let candidates = try Spool.systemIdentifiers(root: root)
        let chosen: UInt64
        if let system {
            guard candidates.contains(system) else {
                throw SpoolError(
                    .io,
                    "spool \"\(root)\" holds no WAL of system \(system) (it holds: \(candidates.map(String.init).joined(separator: ", ")))"
                )
            }
            chosen = system
        } else {
            guard candidates.count == 1 else {
                throw SpoolError(
                    .io,
                    candidates.isEmpty
                        ? "spool \"\(root)\" holds no WAL yet"
                        : "spool \"\(root)\" holds several systems (\(candidates.map(String.init).joined(separator: ", "))); name one with --system"
                )
            }
            chosen = candidates[0]
        }
        systemIdentifier = chosen
        segmentSize = try SystemConfiguration.read(directory: root + "/\(chosen)").segmentSize
        walDirectory = root + "/\(chosen)/wal"
    }

    /// The reader of `system` (or of the only system), or nil while the spool holds no WAL of it yet: a standby
    /// set to follow a spool that its site's receiver has not been sent anything for (the old primary after a
    /// switchover, until the new primary's sender connects) waits instead of failing. A spool directory that does
    /// not exist, or several systems with none named, are still errors.
    public static func openIfPresent(root: String, system: UInt64?) throws -> SpoolReader? {
        let present = try Spool.systemIdentifiers(root: root)
        if let system, !present.contains(system) { return nil }
        if system == nil, present.isEmpty { return nil }
        return try SpoolReader(root: root, system: system)
    }

    /// The file PostgreSQL should get for `name` (a segment or history file name), or nil when the spool does
    /// not have it. A completed segment is decompressed and must be exactly one segment long. The in-progress
    /// segment is served only when it is the newest timeline's tail, its WAL followed by zeros up to the full
    /// segment size: a short file would mean "not yet" to a standby and is fatal in archive recovery.
    public func contents(of name: String) throws -> ServedFile? {
        if timeline(ofHistoryFileName: name) != nil {
            let path = walDirectory + "/" + name
            return FileIO.exists(path) ? ServedFile(whole: try FileIO.readWholeFile(path, maxBytes: 1 << 20)) : nil
        }
        guard let segment = SegmentName(name, segmentSize: segmentSize) else { return nil }
        let completed = walDirectory + "/\(name).lz4"
        if FileIO.exists(completed) {
            let frame = try FileIO.readWholeFile(completed, maxBytes: Int(segmentSize.bytes) + (1 << 20))
            let wal: [UInt8]
            do {
                wal = try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: Int(segmentSize.bytes)) }
            } catch {
                throw SpoolError(.corrupt, "\(completed) is damaged: \(error)")
            }
            guard wal.count == Int(segmentSize.bytes) else {
                throw SpoolError(.corrupt, "\(completed) holds \(wal.count) bytes, not a whole segment")
            }
            return ServedFile(whole: wal)
        }
        // Cheapest test first: PostgreSQL asks for many files that do not exist yet.
        guard FileIO.exists(journalPath(segment)), try segment.timeline == newestTimeline(),
            let wal = try journalWAL(of: segment), !wal.isEmpty
        else { return nil }
        return segmentFile(wal)
    }

    /// The WAL a segment's journal (`NAME.partial`) holds, from the segment's start, on any timeline: also
    /// an old timeline's tail kept aside after a failover, which `contents(of:)` never serves. Nil when there
    /// is no journal for it.
    public func journalWAL(of segment: SegmentName) throws -> [UInt8]? {
        let partial = journalPath(segment)
        guard FileIO.exists(partial) else { return nil }
        return try PartialSegment.read(path: partial).wal
    }

    private func journalPath(_ segment: SegmentName) -> String { walDirectory + "/\(segment).partial" }

    /// The WAL the spool holds without a gap on `timeline` from the segment containing `lsn` onwards: completed
    /// segments, then at most one journal, where it ends. Nil when the spool lacks that first segment. Read by a
    /// sender that ships a finished timeline from its own site's spool.
    public func heldWAL(timeline: TimeLineID, from lsn: LSN) throws -> Range<LSN>? {
        let first = SegmentName(timeline: timeline, containing: lsn, segmentSize: segmentSize)
        var segment = first
        var end = first.startLSN
        while true {
            if FileIO.exists(walDirectory + "/\(segment).lz4") {
                end = segment.endLSN
                segment = segment.next()
                continue
            }
            if let wal = try journalWAL(of: segment) { end = LSN(segment.startLSN.rawValue + UInt64(wal.count)) }
            break
        }
        return end > first.startLSN ? first.startLSN..<end : nil
    }

    /// A segment whose WAL ends early: `wal` from its start, zeros after it, which is what PostgreSQL and
    /// pg_waldump read as a segment whose WAL ends there.
    public func segmentFile(_ wal: [UInt8]) -> ServedFile { ServedFile(bytes: wal, size: Int(segmentSize.bytes)) }

    /// The highest timeline the spool knows: the one its WAL ends on (see `SpoolEnd`), or a newer one whose
    /// history file arrived ahead of its WAL. A journal of an older timeline is then never served as a tail.
    public func newestTimeline() throws -> TimeLineID {
        let names = try FileIO.listDirectory(walDirectory)
        let ending = SpoolEnd(fileNames: names, segmentSize: segmentSize)?.timeline ?? 0
        return max(ending, names.compactMap { timeline(ofHistoryFileName: $0) }.max() ?? 0)
    }
}

/// `ROOT/<system>/system.conf`: the facts a spool directory must agree with, and the format its files are in.
struct SystemConfiguration: Equatable {
    var systemIdentifier: UInt64
    var segmentSize: WALSegmentSize
    /// 1: journals, segments, backups; 2: also the mode history in audit.log. A file without the key is format 1.
    var format = SystemConfiguration.currentFormat

    /// The newest format this walship writes and reads.
    static let currentFormat = 2

    var text: String {
        "system_identifier = \(systemIdentifier)\nwal_segment_size = \(segmentSize.bytes)\nspool_format = \(format)\n"
    }

    /// The same system and segment size, whatever the format.
    func describesSameSystem(as other: SystemConfiguration) -> Bool {
        systemIdentifier == other.systemIdentifier && segmentSize == other.segmentSize
    }

    static func read(directory: String, io: FileIO = .posix) throws -> SystemConfiguration {
        let path = directory + "/system.conf"
        let text = String(decoding: try io.readWholeFile(path, maxBytes: 4096), as: UTF8.self)
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: " ") }
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        guard let id = values["system_identifier"].flatMap({ UInt64($0) }),
            let size = values["wal_segment_size"].flatMap({ UInt64($0) }).flatMap({ WALSegmentSize(bytes: $0) })
        else { throw SpoolError(.corrupt, "\(path) is damaged (expected system_identifier and wal_segment_size)") }
        let format = values["spool_format"].flatMap { Int($0) } ?? 1
        guard format <= currentFormat else {
            throw SpoolError(
                .mismatch,
                "\(path) says spool format \(format), written by a newer walship; this walship reads formats up to \(currentFormat) and does not touch it (hint: run the walship release that wrote it, or a newer one)"
            )
        }
        return SystemConfiguration(systemIdentifier: id, segmentSize: size, format: format)
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
