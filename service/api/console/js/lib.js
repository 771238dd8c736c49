// The view library: Preact with hooks, and htm for templates (no build step).
import { h, render, Fragment } from "../vendor/preact.module.js";
import { useState, useEffect, useRef, useCallback, useMemo } from "../vendor/hooks.module.js";
import htm from "../vendor/htm.module.js";

export const html = htm.bind(h);
export { h, render, Fragment, useState, useEffect, useRef, useCallback, useMemo };
