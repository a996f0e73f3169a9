/**
 * The shape of a `slotflip` subcommand. Commands parse their own argv with node:util `parseArgs`
 * (strict: unknown options are errors), print `--json` output for scripts where it makes sense, and
 * return an exit code. The CLI entry is the composition root: only it reads process.env and argv.
 */
export interface CommandIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

export interface Command {
  /** full --help text: usage line, what it does, every option. */
  help: string;
  run(argv: string[], io: CommandIO): Promise<number>;
}
