// Craton console: what the pages cannot do without a script. Everything else works
// without it. (1) An element with data-refresh is fetched again every data-every ms and
// its content replaced (the clusters' health). (2) Passkeys: the WebAuthn ceremonies
// against /auth/passkey/{register,login}/{begin,finish}.
"use strict";

function refreshEvery(element) {
  const url = element.dataset.refresh;
  const every = Math.max(1000, Number(element.dataset.every) || 3000);
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (answer.ok) element.innerHTML = await answer.text();
    } catch (_) {
      // the next round tries again
    } finally {
      busy = false;
    }
  }, every);
}

function fromB64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
}

function toB64url(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function postJson(url, body) {
  const headers = { "Content-Type": "application/json" };
  const token = csrfToken();
  if (token) headers["X-CSRF-Token"] = token;
  const answer = await fetch(url, {
    method: "POST", credentials: "same-origin", headers, body: JSON.stringify(body || {}),
  });
  const json = await answer.json();
  if (!answer.ok) throw new Error(json.error ? json.error.message : "HTTP " + answer.status);
  return json;
}

function credentialJson(credential) {
  const r = credential.response;
  const response = { clientDataJSON: toB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toB64url(r.attestationObject);
    if (r.getTransports) response.transports = r.getTransports();
  } else {
    response.authenticatorData = toB64url(r.authenticatorData);
    response.signature = toB64url(r.signature);
    if (r.userHandle) response.userHandle = toB64url(r.userHandle);
  }
  return {
    id: credential.id, rawId: toB64url(credential.rawId), type: credential.type, response,
    clientExtensionResults: credential.getClientExtensionResults(),
  };
}

async function addPasskey() {
  const begun = await postJson("/auth/passkey/register/begin");
  const o = begun.options;
  o.challenge = fromB64url(o.challenge);
  o.user.id = fromB64url(o.user.id);
  for (const c of o.excludeCredentials || []) c.id = fromB64url(c.id);
  const credential = await navigator.credentials.create({ publicKey: o });
  await postJson("/auth/passkey/register/finish", {
    handle: begun.handle, credential: credentialJson(credential),
  });
  location.reload();
}

async function signInWithPasskey() {
  const begun = await postJson("/auth/passkey/login/begin");
  const o = begun.options;
  o.challenge = fromB64url(o.challenge);
  for (const c of o.allowCredentials || []) c.id = fromB64url(c.id);
  const credential = await navigator.credentials.get({ publicKey: o });
  await postJson("/auth/passkey/login/finish", {
    handle: begun.handle, credential: credentialJson(credential),
  });
  location.assign(document.querySelector(".brand").getAttribute("href"));
}

function passkeyButton(id, ceremony) {
  const button = document.getElementById(id);
  if (!button || !window.PublicKeyCredential) return;
  const status = document.getElementById("passkey-status");
  button.hidden = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    if (status) status.textContent = "Waiting for your passkey…";
    try {
      await ceremony();
    } catch (error) {
      if (status) status.textContent = "Passkey failed: " + error.message;
      button.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshEvery);
  passkeyButton("passkey-add", addPasskey);
  passkeyButton("passkey-signin", signInWithPasskey);
});
