import Archive
import ArchiveCrypto
import Foundation
import ObjectStore
import WALCore

/// Segments `walship restore-wal --archive` fetched ahead of replay, one directory per system (a cached file is never
/// served for another system): `ROOT/<system>/<segment name>`, each the whole decompressed segment, verified before
/// it is renamed into place, so a file under its own name is always complete.
struct WALPrefetchCache {
    /// Outside any data directory, one per user: restore-wal runs as the server's OS user.
    static var defaultRoot: String { "/var/tmp/walship-wal-cache-\(getuid())" }

    let directory: String

    init(root: String, system: UInt64) {
        directory = root + "/\(system)"
    }

    /// The cached segment `name` and its size (from the file itself), when an earlier call brought it.
    func entry(_ name: String) -> (path: String, size: WALSegmentSize)? {
        guard name.wholeMatch(of: /[0-9A-F]{24}/) != nil else { return nil }
        let path = directory + "/" + name
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG,
            let size = WALSegmentSize(bytes: UInt64(info.st_size))
        else { return nil }
        return (path, size)
    }

    /// Fetches the segments after `requested` that the cache lacks, in parallel, each verified whole (opened,
    /// decompressed, one segment long) and renamed into the cache. Returns how many the cache holds afterwards.
    /// A segment the archive lacks ends nothing: later ones may still come; PostgreSQL asks for each in turn.
    func prefetch(
        after requested: SegmentName, count: Int, history: [TimelineHistoryEntry], system: UInt64, client: S3Client,
        layout: ArchiveConfiguration, keyring: Keyring?
    ) async -> Int {
        let wanted = ArchivePrefetch.names(after: requested, count: count, history: history)
        let missing = wanted.filter { entry($0.description) == nil }
        await withTaskGroup(of: Void.self) { group in
            for name in missing {
                group.addTask {
                    do {
                        guard
                            let bytes = try await ArchivedWAL.fetch(
                                name: name.description, system: system, client: client, layout: layout, keyring: keyring)
                        else { return }
                        guard bytes.count == Int(requested.segmentSize.bytes) else {
                            writeDiagnostic(
                                Data(
                                    "walship restore-wal: \(name) in the archive holds \(bytes.count) bytes, not one \(requested.segmentSize) segment: not prefetched\n"
                                        .utf8))
                            return
                        }
                        store(bytes, as: name.description)
                    } catch {
                        // Not fatal here: PostgreSQL asks for the segment itself, and that call reports the problem.
                        writeDiagnostic(
                            Data("walship restore-wal: prefetching \(name) from the archive failed: \(error)\n".utf8))
                    }
                }
            }
        }
        return wanted.filter { entry($0.description) != nil }.count
    }

    /// Removes what replay has moved past (and what lies beyond the window), so the cache stays bounded; also
    /// temporary files an interrupted call left more than ten minutes ago.
    func evict(requested: SegmentName, window: Int) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in ArchivePrefetch.evictions(cached: names, requested: requested, window: window) {
            unlink(directory + "/" + name)
        }
        let stale = Date().addingTimeInterval(-600)
        for name in names where name.hasPrefix(".") {
            let path = directory + "/" + name
            if let modified = try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date,
                modified < stale
            {
                unlink(path)
            }
        }
    }

    /// The system's directory, made 0700 when missing; false (no prefetch) when it cannot be.
    private func prepare() -> Bool {
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            return true
        } catch {
            writeDiagnostic(
                Data("walship restore-wal: no prefetch: cannot create the cache directory \(directory): \(error)\n".utf8))
            return false
        }
    }

    /// Writes a verified segment beside its name and renames it: a file under a segment's name is always whole.
    private func store(_ bytes: Data, as name: String) {
        // Made only when there is something to keep: a replay at the archive's end leaves no empty directories.
        guard prepare() else { return }
        let temporary = directory + "/.\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        do {
            try bytes.write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, directory + "/" + name) == 0 else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: directory + "/" + name])
            }
        } catch {
            unlink(temporary)
            writeDiagnostic(Data("walship restore-wal: cannot keep \(name) in \(directory): \(error)\n".utf8))
        }
    }
}
