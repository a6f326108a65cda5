import Foundation
import LZ4Codec
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// One stored base backup: `ROOT/<system>/base/<id>/` with `base.tar.lz4` (the data directory as
/// BASE_BACKUP sent it, one LZ4 frame), `backup_manifest`, and `backup.json` (this record).
public struct BackupInfo: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable {
        /// Stored, but the spool does not yet hold all WAL up to the stop LSN: not restorable yet.
        case waitingForWAL = "waiting-for-wal"
        case complete
    }

    public var id: String
    public var label: String
    public var systemIdentifier: String
    public var createdAt: Date
    public var startLSN: String
    public var stopLSN: String
    public var timeline: UInt32
    /// Uncompressed size of the data directory archive.
    public var archiveBytes: UInt64
    /// CRC-32C of the uncompressed archive, checked again at restore.
    public var archiveCRC32C: String
    public var storedBytes: UInt64
    public var status: Status
}

/// Writes one backup as it arrives. Nothing looks like a backup until `finish` renames the directory into
/// place; an interrupted backup leaves only `<id>.partial`, which the receiver removes on start.
public final class BackupWriter {
    public let id: String
    let baseDirectory: String
    let partialDirectory: String
    let label: String
    let startLSN: LSN
    let systemIdentifier: UInt64
    private let io: FileIO
    private let archive: AppendFile
    private let manifest: AppendFile
    private let frame = LZ4.FrameWriter()
    private var archiveBytes: UInt64 = 0
    private var archiveCRC: UInt32 = 0
    private var finished = false

    public init(system: SystemSpool, label: String, startLSN: LSN, now: Date = Date()) throws {
        io = system.io
        baseDirectory = system.directory + "/base"
        try io.makeDirectory(baseDirectory, retry: .rewrittenOnRetry)
        systemIdentifier = system.systemIdentifier
        self.label = label
        self.startLSN = startLSN
        var candidate = Self.formatID(now)
        var n = 2
        while io.exists(baseDirectory + "/" + candidate) || io.exists(baseDirectory + "/" + candidate + ".partial") {
            candidate = Self.formatID(now) + "-\(n)"
            n += 1
        }
        id = candidate
        partialDirectory = baseDirectory + "/" + id + ".partial"
        try io.makeDirectory(partialDirectory, retry: .rewrittenOnRetry)
        archive = try AppendFile(partialDirectory + "/base.tar.lz4", io: io)
        manifest = try AppendFile(partialDirectory + "/backup_manifest", io: io)
        try frame.begin().withUnsafeBytes { try archive.append($0) }
    }

    deinit { if !finished { abort() } }

    static func formatID(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(
            format: "%04d%02d%02dT%02d%02d%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
            parts.tm_hour, parts.tm_min, parts.tm_sec)
    }

    public func appendArchive(_ bytes: UnsafeRawBufferPointer) throws {
        archiveBytes += UInt64(bytes.count)
        archiveCRC = CRC32C.update(archiveCRC, bytes)
        try frame.update(bytes) { try archive.append($0) }
    }

    public func appendManifest(_ bytes: UnsafeRawBufferPointer) throws { try manifest.append(bytes) }

    /// Makes the backup durable and visible: files fsynced, record written, directory renamed into place.
    public func finish(stopLSN: LSN, timeline: TimeLineID, durable: LSN) throws -> BackupInfo {
        try frame.end().withUnsafeBytes { try archive.append($0) }
        try archive.sync()
        try manifest.sync()
        let info = BackupInfo(
            id: id, label: label, systemIdentifier: String(systemIdentifier),
            createdAt: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)),
            startLSN: startLSN.description, stopLSN: stopLSN.description, timeline: timeline,
            archiveBytes: archiveBytes, archiveCRC32C: String(archiveCRC, radix: 16), storedBytes: UInt64(archive.length),
            status: durable >= stopLSN ? .complete : .waitingForWAL)
        try BackupCatalog.write(info, to: partialDirectory, io: io)
        try io.rename(partialDirectory, to: baseDirectory + "/" + id)
        try io.syncDirectory(baseDirectory, retry: .rewrittenOnRetry)
        finished = true
        return info
    }

    /// Drops an unfinished backup.
    public func abort() {
        finished = true
        try? io.removeDirectory(partialDirectory)
    }
}

/// Stored backups of one system.
public enum BackupCatalog {
    public static func list(systemDirectory: String) throws -> [BackupInfo] {
        let base = systemDirectory + "/base"
        guard FileIO.isDirectory(base) else { return [] }
        return try FileIO.listDirectory(base).filter { !$0.hasSuffix(".partial") }.compactMap { name in
            let path = base + "/" + name + "/backup.json"
            guard FileIO.exists(path) else { return nil }
            return try read(path)
        }.sorted { $0.id < $1.id }
    }

    /// A backup's record (`backup.json`) from elsewhere than the spool: the archive's copy.
    public static func decodeRecord(_ data: Data, origin: String) throws -> BackupInfo {
        do {
            return try JSONDecoder.walship.decode(BackupInfo.self, from: data)
        } catch {
            throw SpoolError(.corrupt, "\(origin) is damaged: \(error)")
        }
    }

    static func read(_ path: String) throws -> BackupInfo {
        let data = Data(try FileIO.readWholeFile(path, maxBytes: 1 << 20))
        do {
            return try JSONDecoder.walship.decode(BackupInfo.self, from: data)
        } catch {
            throw SpoolError(.corrupt, "\(path) is damaged: \(error)")
        }
    }

    static func write(_ info: BackupInfo, to directory: String, io: FileIO = .posix) throws {
        let data = try JSONEncoder.walship.encode(info)
        try Array(data).withUnsafeBytes {
            try io.writeAtomically($0, to: directory + "/backup.json", directory: directory, retry: .rewrittenOnRetry)
        }
    }

    /// Marks a stored backup complete once the spool durably holds its WAL.
    public static func markComplete(systemDirectory: String, id: String) throws -> BackupInfo {
        let directory = systemDirectory + "/base/" + id
        var info = try read(directory + "/backup.json")
        info.status = .complete
        try write(info, to: directory)
        return info
    }

    /// Removes what interrupted backups left; they were never visible as backups.
    public static func removeUnfinished(systemDirectory: String, io: FileIO = .posix) throws {
        let base = systemDirectory + "/base"
        guard io.isDirectory(base) else { return }
        for name in try io.listDirectory(base) where name.hasSuffix(".partial") {
            try io.removeDirectory(base + "/" + name)
        }
    }
}

/// Spool files keep dates in ISO 8601 with milliseconds (RPO figures need sub-second times); files
/// written with whole seconds read as well.
extension JSONEncoder {
    static var walship: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
        }
        return e
    }
}

extension JSONDecoder {
    static var walship: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            if let date = (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text))
                ?? (try? Date.ISO8601FormatStyle().parse(text))
            {
                return date
            }
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not an ISO 8601 date: \(text)"))
        }
        return d
    }
}

/// A file written front to back. A failed fsync ends the backup (it is taken again), not the WAL spool.
final class AppendFile {
    let path: String
    private let io: FileIO
    private let fd: Int32
    private(set) var length = 0

    init(_ path: String, io: FileIO) throws {
        self.path = path
        self.io = io
        fd = try io.open(path, O_WRONLY | O_CREAT | O_TRUNC)
    }

    deinit { io.close(fd) }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        try io.pwriteAll(fd, bytes, at: length, path: path)
        length += bytes.count
    }

    func sync() throws { try io.syncFile(fd, path: path, retry: .rewrittenOnRetry) }
}
