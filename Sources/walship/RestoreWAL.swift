import ArgumentParser
import Foundation
import Spool
import WALCore

struct RestoreWAL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-wal",
        abstract: "Copy a WAL segment or history file from the spool, for PostgreSQL's restore_command.",
        discussion: """
            restore_command = 'walship restore-wal --spool /var/lib/walship %f %p'
            Exit status: 0 restored; 1 the spool does not have the file (or no WAL of the system yet), or nothing more of it than the copy already in the destination's directory (routine, prints nothing); 126 the spool has the file but it is damaged or unreadable (PostgreSQL then stops recovery rather than ending it early as if the WAL had run out).
            """)

    @OptionGroup var selection: SpoolSelection

    @Argument(help: "File name PostgreSQL asks for (%f).")
    var fileName: String

    @Argument(help: "Where to write it (%p), relative to the data directory.")
    var destination: String

    func run() throws {
        let file: ServedFile?
        do {
            guard let reader = try SpoolReader.openIfPresent(root: selection.spool, system: selection.system) else {
                // Routine for a standby that follows a spool not yet sent anything: PostgreSQL asks again.
                FileHandle.standardError.write(
                    Data(
                        "walship restore-wal: the spool \(selection.spool) holds no WAL\(selection.system.map { " of system \($0)" } ?? "") yet\n"
                            .utf8))
                throw ExitCode(1)
            }
            file = try reader.contents(of: fileName)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            FileHandle.standardError.write(Data("walship restore-wal: error: \(error)\n".utf8))
            throw ExitCode(126)
        }
        guard let file else { throw ExitCode(1) }
        // A standby whose stream is down asks for the in-progress segment again at every retry
        // (wal_retrieve_retry_interval). When pg_wal, where %p lies, already holds the segment with all the WAL
        // the spool has of it (restored at an earlier retry and kept by PostgreSQL, or streamed), there is nothing
        // new: PostgreSQL reads its own copy when restore_command has none, and the copy is not written again.
        let held = (destination as NSString).deletingLastPathComponent
        if timeline(ofHistoryFileName: fileName) == nil, file.isHeld(by: held.isEmpty ? fileName : held + "/" + fileName) {
            throw ExitCode(1)
        }
        // Written beside the destination and renamed, so PostgreSQL never sees a half-written file.
        let temporary = destination + ".walship-partial"
        do {
            try file.write(to: temporary)
            guard rename(temporary, destination) == 0 else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: destination])
            }
        } catch {
            unlink(temporary)
            FileHandle.standardError.write(Data("walship restore-wal: error: cannot write \(destination): \(error)\n".utf8))
            throw ExitCode(126)
        }
    }
}

/// `--spool DIR [--system ID]`: which spool, and which system in it, a read-only command reads.
struct SpoolSelection: ParsableArguments {
    @Option(help: "Spool directory of walship receive.")
    var spool: String

    @Option(help: "System identifier, when the spool holds more than one system.")
    var system: UInt64?

    func reader() throws -> SpoolReader { try SpoolReader(root: spool, system: system) }
}
