import ArgumentParser
import Foundation
import Spool

struct RestoreWAL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-wal",
        abstract: "Copy a WAL segment or history file from the spool, for PostgreSQL's restore_command.",
        discussion: """
            restore_command = 'walship restore-wal --spool /var/lib/walship %f %p'
            Exit status: 0 restored; 1 the spool does not have the file (routine, prints nothing); 126 the spool has the file but it is damaged or unreadable (PostgreSQL then stops recovery rather than ending it early as if the WAL had run out).
            """)

    @OptionGroup var selection: SpoolSelection

    @Argument(help: "File name PostgreSQL asks for (%f).")
    var fileName: String

    @Argument(help: "Where to write it (%p), relative to the data directory.")
    var destination: String

    func run() throws {
        let bytes: [UInt8]?
        do {
            bytes = try selection.reader().contents(of: fileName)
        } catch {
            FileHandle.standardError.write(Data("walship restore-wal: error: \(error)\n".utf8))
            throw ExitCode(126)
        }
        guard let bytes else { throw ExitCode(1) }
        // Written beside the destination and renamed, so PostgreSQL never sees a half-written file.
        let temporary = destination + ".walship-partial"
        do {
            try Data(bytes).write(to: URL(fileURLWithPath: temporary))
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
