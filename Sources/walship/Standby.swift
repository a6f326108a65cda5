import ArgumentParser
import Foundation
import Operations

struct Standby: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the standbys the receiver remembers in its spool.",
        subcommands: [StandbyForgetCommand.self])
}

struct StandbyForgetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Remove the record of a standby that will not come back, so retention stops keeping WAL for it.",
        discussion: """
            The receiver remembers every standby it served (SPOOL/<system>/standbys/, by slot name, else by application_name) and never prunes WAL such a standby has not replayed, also while it is down. A standby that is gone for good pins WAL forever; this removes its record. Refused while the standby is connected (the running receiver is asked on its control socket). A standby that connects again later is recorded again.
            Example:
              walship standby forget old_dr --spool /var/lib/walship --dry-run
            """)

    @Argument(help: "The standby's name as walship status lists it: its slot name, else its application_name.")
    var name: String

    @Option(help: "Spool directory of walship receive.")
    var spool: String

    @Option(help: "System identifier, when the spool holds more than one system.")
    var system: UInt64?

    @Flag(help: "Say what forgetting it would release, without removing anything.")
    var dryRun = false

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "standby forget")
        do {
            for line in try StandbyForget.run(spool: spool, system: system, name: name, dryRun: dryRun) { print(line) }
        } catch let error as StandbyForgetError {
            throw fail("standby forget", error, kind: .setUp)
        } catch {
            throw fail("standby forget", error)
        }
    }
}
