// GitHub sign-in from the page: authorization code with PKCE (S256), the verifier made here
// with WebCrypto and never sent until the one-time code is exchanged (POST /auth/token).
// The daemon's flow is daemon/web/github_oauth.py: /auth/github/login -> GitHub ->
// /auth/github/callback -> back to this page with ?code=&state=, which the page takes out of
// its URL at once.

import { post } from "./api.js";
import { base64url, randomId } from "./dom.js";

const FLOW_KEY = "agentd.signin"; // sessionStorage, only across the redirect: state, verifier

export async function startGitHub(remember) {
  if (!window.isSecureContext || !crypto.subtle) {
    throw new Error("GitHub sign-in needs this page over https (or on localhost); paste a token instead.");
  }
  const verifier = randomId(48); // 64 characters, as RFC 7636 asks (43 to 128)
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  const state = randomId(16);
  sessionStorage.setItem(FLOW_KEY, JSON.stringify({ state, verifier, remember: Boolean(remember) }));
  const query = new URLSearchParams({
    app_redirect: location.origin + "/",
    code_challenge: base64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
    state,
  });
  location.assign("/auth/github/login?" + query);
}

// Back from GitHub: {token, remember}; null when this load is no sign-in's return. Throws an
// Error saying what went wrong (refused at GitHub, a stale or foreign sign-in, a spent code).
export async function finishGitHub() {
  const params = new URLSearchParams(location.search);
  if (!params.has("code") && !params.has("error")) return null;
  history.replaceState(null, "", location.pathname + location.hash); // the code leaves the URL
  let flow = null;
  try {
    flow = JSON.parse(sessionStorage.getItem(FLOW_KEY) || "null");
  } catch (_) { /* treated as no sign-in in progress */ }
  sessionStorage.removeItem(FLOW_KEY);
  if (!flow || flow.state !== params.get("state")) {
    throw new Error("This sign-in was not started from this page, or it expired: start again.");
  }
  if (params.get("error")) {
    const why = params.get("error_description") || params.get("error");
    throw new Error("GitHub sign-in did not finish: " + why);
  }
  const answer = await post("/auth/token",
    { grant_type: "authorization_code", code: params.get("code"), code_verifier: flow.verifier },
    { auth: false });
  return { token: answer.token, remember: flow.remember };
}
