/**
 * Reads the server's `/metrics` page for the resume tests.
 *
 * @module
 */

/** The samples of metric `name` on `${url}/metrics`, keyed by their label text (`""` for none). */
export async function metric(url: string, name: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = line.match(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`));
    if (m) out.set(m[1] ?? "", Number(m[2]));
  }
  return out;
}

/** The server's session and membership state as its metrics show it. */
export async function sessionState(url: string): Promise<{
  held: number;
  grace: number;
  idents: number;
  rooms: number;
  connections: number;
}> {
  const sessions = await metric(url, "signal_sessions");
  const one = async (name: string) => (await metric(url, name)).get("") ?? NaN;
  return {
    held: sessions.get('{state="held"}') ?? NaN,
    grace: sessions.get('{state="grace"}') ?? NaN,
    idents: await one("signal_idents"),
    rooms: await one("signal_rooms"),
    connections: await one("signal_connections"),
  };
}
