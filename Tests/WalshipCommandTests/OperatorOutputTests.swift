import ArgumentParser
import Foundation
import Testing

@testable import walship

@Suite struct OperatorOutputTests {
    func fields(_ line: String) throws -> [String: String] {
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
    }

    @Test func aDiagnosticKeepsItsLevelAndMessageAsJSON() throws {
        let error = try fields(
            OperatorOutput.jsonDiagnostic(
                "walship promote: error: the standby is paused\n(hint: resume it)", label: "walship.promote"))
        #expect(error["level"] == "error" && error["logger"] == "walship.promote")
        #expect(error["message"] == "the standby is paused\n(hint: resume it)")
        let warning = try fields(OperatorOutput.jsonDiagnostic("walship certs init: warning: only localhost", label: "x"))
        #expect(warning["level"] == "warning" && warning["message"] == "only localhost")
        let bare = try fields(OperatorOutput.jsonDiagnostic("walship restore-wal: the spool holds no WAL yet", label: "x"))
        #expect(bare["level"] == "error" && bare["message"] == "the spool holds no WAL yet")
        let foreign = try fields(OperatorOutput.jsonDiagnostic("Error: Missing expected argument", label: "x"))
        #expect(foreign["message"] == "Error: Missing expected argument" && foreign["time"] != nil)
    }

    @Test func everyCommandTakesTheLogOptions() {
        func leaves(_ type: any ParsableCommand.Type) -> [any ParsableCommand.Type] {
            let subcommands = type.configuration.subcommands
            return subcommands.isEmpty ? [type] : subcommands.flatMap(leaves)
        }
        let commands = leaves(Walship.self)
        #expect(commands.count >= 18)
        for command in commands {
            let help = command._dumpHelp()
            #expect(
                help.contains(#""name" : "log-format""#) && help.contains(#""name" : "log-level""#),
                "walship \(command._commandName) lacks --log-format or --log-level: \(help.prefix(300))")
        }
    }
}
