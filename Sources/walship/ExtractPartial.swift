import ArgumentParser
import Foundation
import Spool
import WALCore

/// Writes out the WAL a journal holds, for a DBA who must look at what it contains: chiefly an old timeline's
/// tail kept aside after a failover at the primary site (WAL the new primary never had).
struct ExtractPartial: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract-partial",
        abstract: "Write the WAL of an in-progress or kept-aside segment (NAME.partial in the spool) as a plain segment file.",
        discussion: """
            The spool's .partial files are journals (raw records and LZ4 blocks), not WAL. This writes the WAL one \
            holds as a full-size segment, zero-padded after its end, which pg_waldump reads:
              walship extract-partial --spool /var/lib/walship 000000010000000000000008 /tmp/aside/000000010000000000000008
              pg_waldump /tmp/aside/000000010000000000000008
            It reads the spool only and may run while walship receive does.
            """)

    @OptionGroup var selection: SpoolSelection

    @Argument(help: "Segment name (24 hexadecimal digits), as in NAME.partial.")
    var segment: String

    @Argument(help: "File to write; name it after the segment for pg_waldump. Must not exist yet.")
    var destination: String

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "extract-partial")
        let reader = try selection.reader()
        let name = segment.hasSuffix(".partial") ? String(segment.dropLast(8)) : segment
        guard let parsed = SegmentName(name, segmentSize: reader.segmentSize) else {
            throw ValidationError(
                "\"\(segment)\" is not a WAL segment name for \(reader.segmentSize) segments (hint: ls \(reader.walDirectory)/*.partial)"
            )
        }
        guard let wal = try reader.journalWAL(of: parsed) else {
            throw ValidationError(
                "the spool has no journal \(parsed).partial (hint: completed segments are NAME.lz4; lz4 -d turns them into WAL)")
        }
        guard !FileManager.default.fileExists(atPath: destination) else {
            throw ValidationError("\(destination) exists; choose a new file")
        }
        do {
            try reader.segmentFile(wal).write(to: destination, exclusive: true, mode: 0o644)
        } catch {
            throw ValidationError("cannot write \(destination): \(error)")
        }
        let end = parsed.startLSN.advanced(by: UInt64(wal.count))
        print(
            "wrote \(destination): WAL of timeline \(parsed.timeline) from \(parsed.startLSN) to \(end) (\(wal.count) bytes), zero-padded to \(reader.segmentSize)"
        )
    }
}
